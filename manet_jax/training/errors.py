"""Errors that the entry points report as one message, without a traceback.

Each names the file, config key or option at fault and, where there is one, the fix.
"""

from __future__ import annotations

from manet_jax.checkpoints import CheckpointError
from manet_jax.convert import CheckpointFileError, StateDictMismatchError
from manet_jax.data.errors import BadImageFilesError, DatasetNotFoundError, ManualFilesError
from manet_jax.training.checkpointing import CheckpointRestoreError
from manet_jax.training.config import ConfigError


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


USER_ERRORS = (ConfigError, DatasetNotFoundError, ManualFilesError, BadImageFilesError, CheckpointError,
               CheckpointFileError, StateDictMismatchError, CheckpointRestoreError, NonFiniteLossError)
