"""The MA-Net model, its initialisation, loss and fusion of the two heads."""

from manet_jax.models.blocks import MULTISCALE_WIRINGS
from manet_jax.models.manet import (BETA, BRANCH_EXECUTION, INIT_SIZE, MANet, branch_execution_for,
                                    check_image_size, fused_logits, init_variables, local_attention_map,
                                    manet_loss, model_flops, stage_outputs, variable_shapes)

__all__ = ["BETA", "BRANCH_EXECUTION", "INIT_SIZE", "MANet", "MULTISCALE_WIRINGS", "branch_execution_for",
           "check_image_size", "fused_logits", "init_variables", "local_attention_map", "manet_loss",
           "model_flops", "stage_outputs", "variable_shapes"]
