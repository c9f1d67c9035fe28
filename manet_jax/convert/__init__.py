"""PyTorch <-> Flax weight conversion for MA-Net (run `python -m manet_jax.convert --help`)."""

from manet_jax.convert.core import (HEAD_LAYERS, Conversion, StateDictMismatchError, flax_to_torch, import_resnet18,
                                    import_state_dict, is_resnet18, normalise_state_dict, num_classes_of,
                                    torch_to_flax)
from manet_jax.convert.files import CheckpointFileError, load_state_dict_file, save_state_dict_file

__all__ = ["HEAD_LAYERS", "CheckpointFileError", "Conversion", "StateDictMismatchError", "flax_to_torch",
           "import_resnet18", "import_state_dict", "is_resnet18", "load_state_dict_file", "normalise_state_dict",
           "num_classes_of", "save_state_dict_file", "torch_to_flax"]
