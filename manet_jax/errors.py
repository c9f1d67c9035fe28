"""The one base class of the errors a user can fix, and the config error every layer raises.

Each entry point catches `ManetError` once and prints its message as one `error:` line; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import signal


class ManetError(Exception):
    """A problem with the user's input (a file, an option, a config value, a dataset): the message
    names the file, key or option at fault and, where there is one, the fix."""


class ConfigError(ManetError, ValueError):
    """A config file, override, option or value that cannot be used; the message names the key."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or the error it was raised from, reports a full disk (an OSError with ENOSPC,
    or TensorFlow's and tensorstore's errors, which only say so in their message)."""
    causes = (error, error.__cause__, error.__context__)
    return any(isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e)
               for e in causes if e is not None)


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C after it saved what it resumes from (and logged how); the tools exit
    with status 130 (128 + SIGINT), without a traceback."""


class Stopped(BaseException):
    """SIGTERM or SIGINT acted upon at one of a tool's safe points (`cli.check_signals`), with
    nothing left to save: the tools print one line and exit with 128 + `signal`. Not an Exception,
    so that what catches errors lets it through."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum)
        super().__init__(self.signal.name)
