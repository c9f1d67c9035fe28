"""Is the installed jax right on the CPU for MA-Net? Known XLA:CPU miscompiles, reproduced.

- jax-ml/jax#39103 (jaxlib 0.10.2): a vmapped matrix-vector product followed by a reduction sums
  wrong under jit. On jaxlib 0.10.2 the reproducer is an expected failure: MA-Net's CPU program
  has no such product (its branches are unrolled on CPU) and its large reductions are checked
  directly below.
- jax-ml/jax#39352 (jaxlib 0.10.2, on some CPUs only): arctan of 50 or more elements.
- Found here: with XLA:CPU's own reduction kernels instead of YNNPACK's (jaxlib 0.10.1, or 0.10.2
  with `--xla_cpu_experimental_ynn_fusion_type=-reduce` or `=`, the workaround for #39103), the
  gradient through an attention block (conv, train-mode BatchNorm, CBAM, residual) comes out wrong:
  up to 35% in float64 and NaN in MA-Net's float32 conv1 gradient. jaxlib 0.10.1 is excluded in
  setup.cfg and the flag is not set.
"""

from __future__ import annotations

from importlib.metadata import version

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from manet_jax.convert import flax_to_torch
from manet_jax.models.blocks import BasicBlock
from manet_jax.models.layers import BatchNorm
from reference.manet_torch import AttentionBlock

JAXLIB = version("jaxlib")


@pytest.mark.xfail(JAXLIB == "0.10.2", strict=True, reason="jax-ml/jax#39103 is in jaxlib 0.10.2")
def test_vmapped_matvec_then_sum():
    x = np.zeros((32769, 3), np.float32)
    x[-1, 0] = 32768
    f = lambda x: jax.vmap(lambda row: jnp.sum((jnp.eye(3) @ row) ** 2))(x)  # noqa: E731
    assert float(jax.jit(f)(x)[-1]) == 32768.0**2 == float(f(x)[-1])


@pytest.mark.xfail(JAXLIB == "0.10.2", strict=False, reason="jax-ml/jax#39352 hits jaxlib 0.10.2 on some CPUs")
@pytest.mark.parametrize("n", [49, 50, 64, 200])
def test_arctan(n):
    x = np.random.default_rng(n).uniform(-10, 10, n).astype(np.float32)
    np.testing.assert_allclose(jax.jit(jnp.arctan)(x), np.arctan(x), rtol=0, atol=1e-6)


def test_batchnorm_statistics_over_800k_rows():
    """Batch statistics over batch x height x width = 64 x 112 x 112 (MA-Net's bn1 at batch 64)."""
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 112, 112, 4)).astype(np.float32)
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, False)
    y, updates = jax.jit(lambda v, x: bn.apply(v, x, True, mutable=["batch_stats"]))(variables, x)
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    n = x.size // 4
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-6)
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=0, atol=2e-5)


@pytest.mark.slow  # a 512-channel block's gradient compiled, and PyTorch's: about 17 s for both
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_attention_block_gradient_matches_pytorch(dtype):
    """The miscompile found here: the gradient through conv, BatchNorm with batch statistics, CBAM."""
    x = np.random.default_rng(0).standard_normal((4, 7, 7, 256)).astype(dtype)
    with jax.enable_x64(dtype == "float64"):
        block = BasicBlock(512, 1, attention=True, dtype=jnp.dtype(dtype))
        variables = jax.tree_util.tree_map(lambda a: a.astype(dtype), block.init(jax.random.key(0), x, True))

        def loss(params, x):
            y, _ = block.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y))

        grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
        ours = {**flax_to_torch({**variables, "params": grads}), "x": np.asarray(grad_x)}
    reference = AttentionBlock(256, 512).to(getattr(torch, dtype)).train()
    reference.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in flax_to_torch(variables).items()})
    x_torch = torch.as_tensor(x.transpose(0, 3, 1, 2)).requires_grad_(True)
    torch.sin(reference(x_torch)).sum().backward()
    expected = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    expected["x"] = x_torch.grad.numpy().transpose(0, 2, 3, 1)
    limit = 1e-12 if dtype == "float64" else 2e-4
    errors = {k: float(np.abs(ours[k] - v).max() / np.abs(v).max()) for k, v in expected.items()}
    assert max(errors.values()) < limit, errors
