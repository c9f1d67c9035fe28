"""Loaded by the tools the tests start (on their PYTHONPATH): `import tensorflow` prints the lines
TensorFlow prints at import on CPUs with AVX-512 unless its oneDNN operations are off, on any CPU,
so that the tests of the tools' one-line errors fail wherever TensorFlow could log first."""

import importlib.abc
import os
import sys

STARTUP_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:0.000000 0 port.cc:153] oneDNN custom operations are on. You may see slightly different "
    "numerical results due to floating-point round-off errors from different computation orders. To turn them "
    "off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n")


class TensorFlowStartup(importlib.abc.MetaPathFinder):
    """Prints STARTUP_LINES when `tensorflow` is first imported; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            sys.meta_path.remove(self)
            if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
                sys.stderr.write(STARTUP_LINES)
        return None


sys.meta_path.insert(0, TensorFlowStartup())
