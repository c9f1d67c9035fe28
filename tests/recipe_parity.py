"""The trainer's recipe against the official one, step by step in float64; run in its own process
by test_recipe_parity (python tests/recipe_parity.py DATA_DIR).

The run of `build.build(config)` (its optimizer, StepLR schedule and jitted train step; config
dtype float64, its variables float64) and the official recipe on the PyTorch reference
(tests/reference) in float64 (`torch.optim.SGD(momentum=0.9, weight_decay=1e-4)`, `StepLR`
stepped after every epoch, loss 0.6 CE(local) + 0.4 CE(global)) take the same batches of the
trainer's input pipeline: 2 epochs of 3 steps of 4 synthetic faces at 96x96, the learning rate
stepped x0.1 between them. After every step the losses, every parameter and every BatchNorm
buffer must agree to 1e-8 relative (L2 per tensor); batch counters exactly. A control run of the
reference whose StepLR has gamma 0.5 must differ by more than that after the learning-rate step,
so the check can fail. Prints the errors of every step; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_ENABLE_X64"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from manet_jax.convert import flax_to_torch  # noqa: E402
from manet_jax.mesh import make_mesh  # noqa: E402
from manet_jax.training.build import build  # noqa: E402
from manet_jax.training.config import load_config  # noqa: E402
from manet_jax.training.steps import create_train_state  # noqa: E402
from reference.manet_torch import MANet as TorchMANet  # noqa: E402
from train_helpers import REPO, random_variables  # noqa: E402

TOLERANCE = 1e-8
SIZE = 96  # BatchNorm over at least 3x3 maps: at 32x32 (1x1 maps in layer4) a float64 run diverges from round-off
BETA = 0.6
CONTROL_GAMMA = 0.5


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


class OfficialRecipe:
    """The reference model in float64 with the official optimizer and StepLR, from `state_dict`."""

    def __init__(self, state_dict: dict[str, np.ndarray], config, gamma: float, steps_per_epoch: int) -> None:
        self.model = TorchMANet(7).double().train()
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_step_epochs, gamma=gamma)
        self.steps_per_epoch, self.steps = steps_per_epoch, 0

    def step(self, images: np.ndarray, labels: np.ndarray) -> float:
        """One train step on NHWC `images`; StepLR steps after the epoch's last one. The loss."""
        local, glob = self.model(torch.from_numpy(images.transpose(0, 3, 1, 2)).double())
        target = torch.from_numpy(labels).long()
        loss = (BETA * torch.nn.functional.cross_entropy(local, target)
                + (1 - BETA) * torch.nn.functional.cross_entropy(glob, target))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.scheduler.step()
        return float(loss)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in self.model.state_dict().items()}


def errors(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], parameters: set[str]) -> dict[str, float]:
    """The worst relative L2 error of a parameter and of a BatchNorm buffer (names the tensor)."""
    out = {}
    for kind, keys in (("parameters", [k for k in theirs if k in parameters]),
                       ("bn buffers", [k for k in theirs if k.endswith(("running_mean", "running_var"))])):
        key = max(keys, key=lambda k: rel(ours[k], theirs[k]))
        out[f"{kind} (worst: {key})"] = rel(ours[key], theirs[key])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    config = load_config(str(REPO / "configs/demo.py"), [
        f"dataset=synthetic_faces/{SIZE}_12_7", f"data_dir={args.data_dir}", f"image_size={SIZE}", "batch_size=4",
        "num_epochs=2", "learning_rate=0.01", "lr_schedule=step", "lr_step_epochs=1", "lr_gamma=0.1", "dtype=float64"])
    setup = build(config, make_mesh(jax.devices()[:1]))
    assert setup.steps_per_epoch == 3 and setup.total_steps == 6, (setup.steps_per_epoch, setup.total_steps)
    variables = jax.tree.map(lambda a: a.astype(np.float64) if a.dtype == np.float32 else a, random_variables())
    state = create_train_state(variables, setup.optimizer, setup.mesh)
    official = OfficialRecipe(flax_to_torch(variables), config, config.lr_gamma, setup.steps_per_epoch)
    control = OfficialRecipe(flax_to_torch(variables), config, CONTROL_GAMMA, setup.steps_per_epoch)
    parameters = {name for name, _ in official.model.named_parameters()}

    batches, worst, failed = setup.train_batches(), {}, False
    for step in range(setup.total_steps):
        batch = next(batches)
        lr = float(setup.schedule(step))
        state, metrics = setup.train_step(state, batch)
        images, labels = np.asarray(jax.device_get(batch["image"])), np.asarray(jax.device_get(batch["label"]))
        loss = official.step(images, labels)
        control.step(images, labels)
        ours, theirs = flax_to_torch(jax.device_get(state.variables)), official.state()
        step_errors = {"loss": abs(float(metrics["loss"]) - loss) / abs(loss), **errors(ours, theirs, parameters)}
        counters = sorted(k for k in theirs if k.endswith("num_batches_tracked") and int(ours[k]) != int(theirs[k]))
        print(f"step {step + 1} (lr {lr:g}): " + "; ".join(f"{name} {e:.2e}" for name, e in step_errors.items())
              + (f"; batch counters differ: {counters}" if counters else ""))
        failed |= bool(counters) or any(not e <= TOLERANCE for e in step_errors.values())
        for name, e in step_errors.items():
            worst[name.split(" (")[0]] = max(worst.get(name.split(" (")[0], 0.0), e)
    control_error = max(errors(ours, control.state(), parameters).values())
    print("max over the steps: " + "; ".join(f"{name} {e:.2e}" for name, e in worst.items())
          + f" (tolerance {TOLERANCE:g} relative)")
    print(f"control (StepLR gamma {CONTROL_GAMMA:g}) after the last step: {control_error:.2e}")
    if not control_error > TOLERANCE:
        print("the control run agrees too: the check cannot fail")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
