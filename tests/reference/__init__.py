"""PyTorch MA-Net written from a description of the model, used only by the tests."""
