"""Config files and `--config.KEY=VALUE` overrides: values read as their key's type, and a misspelt
key or a bad value, on the command line or in a file, is one error naming the key and the file."""

from pathlib import Path

import pytest

from manet_jax.errors import ConfigError
from manet_jax.training.config import load_config, profile_steps

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo.py")
KEYS = "the keys are listed in manet_jax/training/config.py"


def value(config, key):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("override, expected", [  # as ml_collections' config flags read them
    ("learning_rate=1", 1.0), ("learning_rate=1e-2", 0.01), ("beta=.5", 0.5),
    ("num_epochs=3", 3), ("seed=0x10", 16),
    ("input.balanced_sampling=true", True), ("input.balanced_sampling=1", True),
    ("init_from_other_wiring=False", False),
    ("input.crop_scale=(0.5,1.0)", (0.5, 1.0)), ("input.crop_scale=0.5,0.75", (0.5, 0.75)),
    ("input.crop_ratio=[0.5, 2]", (0.5, 2)),
    ("multiscale_wiring=2021", "2021"), ("init_from=", ""), ("eval_dataset=a,b:test", "a,b:test"),
    # None sets the keys whose default is None (new: before, 'None' was a split named 'None', or an error)
    ("eval_batch_size=None", None), ("eval_split=None", None),
])
def test_overrides_read_values_as_their_keys_type(override, expected):
    config = load_config(DEMO, [override])
    got = value(config, override.partition("=")[0])
    assert (got, type(got)) == (expected, type(expected))


@pytest.mark.parametrize("override, message", [
    ("lerning_rate=0.1", f"unknown config key 'lerning_rate' (did you mean 'learning_rate'?) in "
                         f"--config.lerning_rate=0.1 for {DEMO}; {KEYS}"),
    ("input.flip_prb=0", f"unknown config key 'input.flip_prb' (did you mean 'input.flip_prob'?) in "
                         f"--config.input.flip_prb=0 for {DEMO}; {KEYS}"),
    ("inputs.flip_prob=0", f"unknown config key 'inputs.flip_prob' (did you mean 'input.flip_prob'?) in "
                           f"--config.inputs.flip_prob=0 for {DEMO}; {KEYS}"),
    ("learning_rate.x=1", f"unknown config key 'learning_rate.x' in --config.learning_rate.x=1 for {DEMO}; {KEYS}"),
    ("learning_rate=fast", f"--config.learning_rate=fast: config.learning_rate of {DEMO} takes a number, not 'fast'"),
    ("num_epochs=2.5", f"--config.num_epochs=2.5: config.num_epochs of {DEMO} takes an integer, not '2.5'"),
    ("image_size=None", f"--config.image_size=None: config.image_size of {DEMO} takes an integer, not 'None'"),
    ("input.balanced_sampling=yes", f"--config.input.balanced_sampling=yes: config.input.balanced_sampling of "
                                    f"{DEMO} takes true or false, not 'yes'"),
    ("input.crop_scale=abc", f"--config.input.crop_scale=abc: config.input.crop_scale of {DEMO} takes a tuple "
                             f"such as (0.5, 1.0), not 'abc'"),
    ("input=3", f"--config.input=3: config.input of {DEMO} is a group of keys; set one of them, "
                f"e.g. --config.input.balanced_sampling=VALUE"),
])
def test_misspelt_keys_and_bad_values_name_the_key_and_the_file(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(DEMO, [override])
    assert str(error.value) == message


def write(path: Path, body: str) -> str:
    path.write_text("from manet_jax.training.config import base_config\n\n\ndef get_config():\n"
                    "    config = base_config()\n" + body)
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("    config.lerning_rate = 0.1\n    return config\n",
     "unknown config key 'lerning_rate' (did you mean 'learning_rate'?) set by {path}; " + KEYS),
    ("    config.input.flip_prb = 0.0\n    return config\n",
     "unknown config key 'input.flip_prb' (did you mean 'input.flip_prob'?) set by {path}; " + KEYS),
    ("    config.learning_rate = 'fast'\n    return config\n",
     "cannot load the config file {path}, line 6: TypeError: Could not override field 'learning_rate' (reference). "
     "fast is of original type <class 'str'> and cannot be casted to type <class 'float'>"),
    ("    return dict(config)\n",
     "{path}: get_config() must return base_config() with its settings (manet_jax/training/config.py), not a dict"),
    ("    return config[\n", "cannot load the config file {path}, line 6: SyntaxError: '[' was never closed (bad.py, line 6)"),
])
def test_errors_of_a_config_file_are_one_line_naming_it(tmp_path, body, message):
    path = write(tmp_path / "bad.py", body)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == message.format(path=path)


def test_each_config_file_is_loaded_afresh(tmp_path):
    """ml_collections' loader kept one module for every config file: a file without get_config()
    ran the get_config() of the file loaded before it."""
    good = write(tmp_path / "good.py", "    config.dataset = 'raf_db'\n    return config\n")
    assert load_config(good, ["num_epochs=1", "batch_size=8", "learning_rate=0.1", "lr_step_epochs=1"]).dataset == "raf_db"
    (tmp_path / "empty.py").write_text("DATASET = 'raf_db'\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(tmp_path / "empty.py"))
    assert str(error.value) == (f"cannot load the config file {tmp_path / 'empty.py'}: "
                                f"AttributeError: module 'empty' has no attribute 'get_config'")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'missing.py'}: no such config file$"):
        load_config(str(tmp_path / "missing.py"))


@pytest.mark.parametrize("value", ["5", "3:2", "0:2", "a:b", "2:"])
def test_profile_steps_are_a_first_and_last_step(value):
    with pytest.raises(ConfigError) as error:
        load_config(DEMO, [f"profile_steps={value}"])
    assert str(error.value) == ("config.profile_steps must be 'A:B', the first and last step to profile (1 <= A <= B), "
                                f"or '' for none; got {value!r}")
    assert profile_steps(load_config(DEMO, ["profile_steps=2:4"])) == (2, 4)
    assert profile_steps(load_config(DEMO)) is None
