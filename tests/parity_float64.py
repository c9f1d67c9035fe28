"""Float64 parity against the golden float64 replicas (2023 and 2021 wirings); run in its own process
by test_model_parity.

Exits non-zero (with the failing quantities) when any check fails; prints the measured errors.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_ENABLE_X64"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import golden  # noqa: E402
from manet_jax.convert import flax_to_torch, torch_to_flax  # noqa: E402
from manet_jax.models import MANet, fused_logits, manet_loss  # noqa: E402


def check(execution: str, wiring: str) -> bool:
    """Compare one branch execution and multi-scale wiring with the replica; print the errors;
    True when all pass."""
    g = golden.load(7, wiring)
    variables = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float64) if np.issubdtype(a.dtype, np.floating) else a,
        torch_to_flax(golden.state_dict(0, 7)))
    x, y = golden.inputs(0, 4, 7)
    x = jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float64)
    model = MANet(7, dtype=jnp.float64, branch_execution=execution, multiscale_wiring=wiring)
    eval_logits = fused_logits(*jax.jit(lambda v, x: model.apply(v, x))(variables, x))

    def loss_fn(params):
        (local, glob), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                       train=True, mutable=["batch_stats"])
        return manet_loss(local, glob, y)[0], fused_logits(local, glob)

    (loss, train_logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    zeros = jax.tree_util.tree_map(np.zeros_like, variables["batch_stats"])
    grads = flax_to_torch({"params": grads, "batch_stats": zeros})
    norms = np.array([np.linalg.norm(grads[k]) for k in g["param_keys"]])

    errors = {
        "logits_eval_f64 (abs)": (np.abs(eval_logits - g["logits_eval_f64"]).max(), 1e-9),
        "logits_train_f64 (abs)": (np.abs(train_logits - g["logits_train_f64"]).max(), 1e-9),
        "loss_f64 (abs)": (abs(float(loss) - float(g["loss_f64"])), 1e-9),
        "grad_norm_f64 (rel L2)": (golden.rel_l2(norms, g["grad_norm_f64"]), 1e-8),
    }
    for key in g["grad_subset_keys"]:
        index, values, _, _ = golden.subsampled(g, f"grad_f64/{key}")
        errors[f"grad_f64/{key} (rel L2)"] = (golden.rel_l2(grads[key].reshape(-1)[index], values), 1e-8)
    passed = True
    for name, (error, limit) in errors.items():
        print(f"{wiring} {execution:<9} {name:<70} {error:.3e}  (limit {limit:.0e})")
        passed &= bool(error <= limit)
    return passed


def main() -> int:
    # Two runs cover both branch executions and both wirings: the local branch's figures are the
    # same in both wirings' goldens.
    results = [check(execution, wiring) for execution, wiring in (("vmap", "2023"), ("unrolled", "2021"))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
