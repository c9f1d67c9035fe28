"""The layers against reference computations: `Conv` (maps smaller than the kernel go through
`conv_by_matmul`) and the max pool's gradient (PyTorch's tie-breaking)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manet_jax.models.layers import Conv, conv_by_matmul, max_pool_3x3_s2

# (height, width, in, out, kernel, stride): maps smaller than, equal to and larger than the kernel.
SHAPES = [(2, 2, 8, 4, 3, 1), (2, 2, 2, 1, 7, 1), (2, 3, 4, 6, 3, 2), (1, 1, 3, 2, 3, 1), (7, 7, 2, 1, 7, 1),
          (5, 5, 3, 4, 3, 2), (6, 6, 2, 2, 7, 2)]


def lax_conv(x, kernel, stride):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


@pytest.mark.slow  # eager gradients of 7 shapes: about 23 s
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_by_matmul_is_the_convolution(shape):
    height, width, cin, cout, k, stride = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, height, width, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        ours = conv_by_matmul(x, kernel, stride)
        grads = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_by_matmul(x, w, stride))), (0, 1))(x, kernel)
    expected = lax_conv(x, kernel, stride)
    expected_grads = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax_conv(x, w, stride))), (0, 1))(x, kernel)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size,kernel", [(2, 3), (5, 3), (5, 1), (4, 1)])
def test_conv_matches_flax_conv_with_the_same_parameters(size, kernel):
    """Same parameter tree and outputs as flax's nn.Conv with PyTorch's padding, every path."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, size, size, 4)), jnp.float32)
    ours = Conv(6, kernel, 2)
    variables = ours.init(jax.random.key(0), x)
    pad = kernel // 2
    theirs = nn.Conv(6, (kernel, kernel), (2, 2), padding=((pad, pad), (pad, pad)), use_bias=False)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [7, 8])
def test_max_pool_gradient_is_pytorchs(size):
    """Ties (frequent after a ReLU) send the gradient to the window's first maximum, as in PyTorch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = np.maximum(rng.integers(-2, 3, (2, size, size, 3)), 0).astype(np.float32)  # mostly ties
    g = rng.standard_normal((2, (size + 1) // 2, (size + 1) // 2, 3)).astype(np.float32)
    y, vjp = jax.vjp(max_pool_3x3_s2, jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(g))
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
    y_torch = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
    y_torch.backward(torch.from_numpy(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(y, y_torch.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
