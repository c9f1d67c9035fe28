"""The documentation is true: its links lead somewhere and its commands parse.

README.md, CONTRIBUTING.md and every page under docs/: each relative link (and its #anchor,
against the target page's headings) resolves, and each `python -m manet_jax.<tool> ...` or
`manet-<tool> ...` command in a shell code block parses with the tool's own `build_parser()`; a
`--config` file must load with its `--config.KEY=VALUE` overrides (`load_config`, which checks the
keys and their values). Nothing is run: no subprocess, no training, no data.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import importlib.util
import argparse
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
COMMAND_START = re.compile(r"^\s*(\$ )?(python -m manet_jax\b|manet-\w)")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str


def split_page(page: Path) -> tuple[list[Block], str]:
    """The fenced code blocks of a Markdown page, and its prose (code blocks blanked, line numbers kept)."""
    blocks, prose, fence, start, language, body = [], [], None, 0, "", []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, start, language, body = match.group(1), number, match.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            blocks.append(Block(page, start, language, "\n".join(body)))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: inline code and links as their text, lower case, punctuation
    other than '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in split_page(page)[1].splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
    return {f"{base}-{n}" if n else base for base, count in seen.items() for n in range(count)}


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code, inline code spans included."""
    found = []
    for number, line in enumerate(split_page(page)[1].splitlines(), 1):
        line = re.sub(r"`[^`]*`", "", line)
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
    return found


def link_errors(page: Path, root: Path = ROOT) -> list[str]:
    errors = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            errors.append(f"{where}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            errors.append(f"{where}: no heading with this anchor in {resolved.relative_to(root)}")
    return errors


# Commands ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    where: str  # page:line of the code block
    module: str  # the tool's module, e.g. manet_jax.train
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join([self.module, *self.argv])}"


def console_scripts() -> dict[str, str]:
    """manet-<tool> -> its module, from setup.cfg's [options.entry_points]."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = {}
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip().partition(":")[0]
    return scripts


def shell_text(block: Block) -> str:
    """The commands of a shell block: a console block's `$ ` lines (and their continuations) without
    the prompt, every line of any other; backslash continuations joined."""
    if block.language == "console":
        kept, continued = [], False
        for line in block.text.splitlines():
            if line.startswith("$ ") or continued:
                kept.append(line.removeprefix("$ "))
                continued = line.endswith("\\")
        text = "\n".join(kept)
    else:
        text = block.text
    return re.sub(r"\\\n", " ", text)


def without_comments(text: str) -> str:
    """The text without its shell comments: from a '#' that starts a word, outside quotes, to the
    end of its line."""
    out, quote, i = [], None, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and quote != "'":  # an escaped character stays as it is
            out.append(text[i:i + 2])
            i += 2
            continue
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (not out or out[-1][-1] in " \t\n"):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def words(text: str) -> list[str]:
    """Shell words, comments dropped; each run of ';', '&', '|' and newlines is one separator word."""
    lexer = shlex.shlex(without_comments(text), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = " \t\r", True, ""
    return list(lexer)


def is_separator(word: str) -> bool:
    return word != "" and set(word) <= set(";&|\n")


def commands_in(text: str, where: str, scripts: dict[str, str], variables: dict[str, str]) -> list[Command]:
    """The manet-jax commands of shell text: simple commands split at `&&`, `|`, `;` and newlines,
    comments dropped, leading VAR=value assignments skipped, `$VAR` of a `for VAR in A ...` loop
    taken as A, optional parts `[--option VALUE]` taken as given; commands quoted inside a word
    (`ssh ... --command="cd x && python -m ..."`) searched as well."""
    found, segment = [], []
    for word in [*words(text), "\n"]:
        if is_separator(word):
            found += command_of(segment, where, scripts, variables)
            segment = []
        else:
            segment.append(word)
    return found


def command_of(segment: list[str], where: str, scripts: dict[str, str], variables: dict[str, str]) -> list[Command]:
    while segment and (segment[0] in ("do", "then", "else") or re.match(r"^[A-Za-z_]\w*=", segment[0])):
        segment = segment[1:]
    if len(segment) >= 3 and segment[0] == "for" and segment[2] == "in":
        variables[segment[1]] = segment[3] if len(segment) > 3 else ""
        return []
    segment = [re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), word) for word in segment]
    argv = [word.strip("[]") for word in segment if word not in ("[", "]", "...")]
    if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2].split(".")[0] == "manet_jax":
        return [Command(where, argv[2], tuple(argv[3:]))]
    if argv and argv[0].startswith("manet-"):  # a console script: its module, or its name if it has none
        return [Command(where, scripts.get(argv[0], argv[0]), tuple(argv[1:]))]
    nested = []
    for word in argv:
        if re.search(r"\s", word) and ("manet_jax" in word or "manet-" in word):
            inner = word.partition("=")[2] if word.startswith("-") else word
            nested += commands_in(inner, where, scripts, variables)
    return nested


def documented_commands() -> list[Command]:
    scripts, found = console_scripts(), []
    for page in PAGES:
        for block in split_page(page)[0]:
            where = f"{page.relative_to(ROOT)}:{block.line}"
            if block.language in SHELL_BLOCKS:
                found += commands_in(shell_text(block), where, scripts, {})
    return found


def tool_parser(module: str) -> argparse.ArgumentParser:
    """The parser of the tool `python -m module` runs, from its build_parser()."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.fail(f"{module}: no such tool (neither a manet_jax module nor a console script in setup.cfg)")
    if spec.submodule_search_locations is not None:  # python -m runs a package's __main__
        module += ".__main__"
    build_parser = getattr(importlib.import_module(module), "build_parser", None)
    if build_parser is None:
        pytest.fail(f"{module} has no build_parser()")
    return build_parser()


def check_command(command: Command) -> None:
    """Parses the command line with the tool's parser; a --config must load with its overrides."""
    from manet_jax import cli
    from manet_jax.errors import ManetError
    from manet_jax.training.config import load_config

    parser = tool_parser(command.module)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args, overrides = cli.parse_with_overrides(parser, command.argv)
            if getattr(args, "config", None) is not None:
                config = Path(args.config)
                load_config(str(config if config.is_absolute() else ROOT / config), overrides)
            elif overrides:
                parser.error(f"{cli.CONFIG_OVERRIDE}{overrides[0]}: this tool takes no --config")
    except SystemExit:
        pytest.fail(f"{command}\n{stderr.getvalue().strip()}")
    except ManetError as e:
        pytest.fail(f"{command}\nerror: {e}")


COMMANDS = documented_commands()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_resolve(page):
    assert link_errors(page) == []


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_commands_parse(command):
    check_command(command)


def test_every_tool_has_a_documented_command():
    def package(module: str) -> str:  # python -m manet_jax.convert runs manet_jax.convert.__main__
        return module.removesuffix(".__main__")

    assert {package(m) for m in console_scripts().values()} - {package(c.module) for c in COMMANDS} == set()


def test_commands_are_in_shell_blocks():
    """A command in a block of another language would not be checked: label such blocks bash or console."""
    unchecked = [f"{block.page.relative_to(ROOT)}:{block.line}" for page in PAGES for block in split_page(page)[0]
                 if block.language not in SHELL_BLOCKS and any(map(COMMAND_START.match, block.text.splitlines()))]
    assert unchecked == []


def test_readme_and_contributing_quote_what_ci_runs():
    """README's test command is .ci/run's; CONTRIBUTING quotes its install part, its pytest part,
    and .ci/run's line whole (across a line break)."""
    ci_command = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install"))
    install, pytest_command = ci_command.split(" && python -m pytest")
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert ci_command in (ROOT / "README.md").read_text()
    assert f"```bash\n{install}\n```" in contributing
    assert f"python -m pytest{pytest_command}" in contributing
    assert ci_command in " ".join(contributing.split())


def test_the_checks_can_fail(tmp_path):
    """An option a tool lacks, a config key that does not exist and a missing file are caught."""
    scripts = console_scripts()
    for text in ("python -m manet_jax.predict photos --checkpoint DIR --no-such-option",
                 "manet-train --config configs/demo.py --workdir w --config.no_such_key=1",
                 "python -m manet_jax.convert to-flax IN OUT --wiring 2021"):
        command, = commands_in(text, "test", scripts, {})
        with pytest.raises(pytest.fail.Exception):
            check_command(command)
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[a](missing.md) [b](#a-title) [c](#no-such-title) `[d](missing.md)`\n")
    assert link_errors(page, tmp_path) == ["page.md:3: missing.md: no such file or folder",
                                           "page.md:3: #no-such-title: no heading with this anchor in page.md"]
