"""MA-Net for facial expression recognition in JAX/Flax."""

import os

# TensorFlow (tf.data, image decoding) logs at import on CPUs with AVX-512 that its oneDNN custom
# operations are on, before its log level applies (TF_CPP_MIN_LOG_LEVEL does not stop it). Every
# entry point imports this package first, so these are set before anything imports TensorFlow and
# a tool's error stays its one line; the input pipeline uses no operation oneDNN speeds up. A user's
# own settings win.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
