"""The one base class of the errors a user can fix, and the config error every layer raises.

Each entry point catches `ManetError` once and prints its message as one `error:` line; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class ManetError(Exception):
    """A problem with the user's input (a file, an option, a config value, a dataset): the message
    names the file, key or option at fault and, where there is one, the fix."""


class ConfigError(ManetError, ValueError):
    """A config file, override, option or value that cannot be used; the message names the key."""
