"""The MA-Net model."""

from manet_jax.models.manet import (BETA, BRANCH_EXECUTION, MANet, fused_logits, local_attention_map, manet_loss,
                                    stage_outputs)

__all__ = ["BETA", "BRANCH_EXECUTION", "MANet", "fused_logits", "local_attention_map", "manet_loss",
           "stage_outputs"]
