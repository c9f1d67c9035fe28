"""setup.cfg's dependencies and constraints.txt, the exact set the suite last passed with, agree."""

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def declared() -> list[Requirement]:
    """Every requirement of setup.cfg: install_requires and each extra's."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    lines += [line for extra in config["options.extras_require"].values() for line in extra.splitlines()]
    return [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def pinned() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_the_constraints_pin_every_direct_dependency_within_its_declared_range():
    pins = pinned()
    missing = [str(r) for r in declared() if canonicalize_name(r.name) not in pins]
    assert missing == []
    outside = [f"{r} but {pins[canonicalize_name(r.name)]}" for r in declared()
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert outside == []
