"""PyTorch <-> Flax weight conversion for MA-Net (run `python -m manet_jax.convert --help`).

The names below load from their modules at first use, so that `python -m manet_jax.convert`
starts (and takes its signals) before JAX loads."""

import importlib

_MODULES = {"core": ["HEAD_LAYERS", "Conversion", "StateDictMismatchError", "flax_to_torch", "import_resnet18",
                     "import_state_dict", "is_resnet18", "normalise_state_dict", "num_classes_of", "torch_to_flax"],
            "files": ["CheckpointFileError", "load_state_dict_file", "save_state_dict_file"]}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
