"""PyTorch MA-Net written from the specification, used only by the tests."""
