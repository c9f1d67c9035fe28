"""PyTorch MA-Net written for the tests from a description of the model.

Not the official code: an independent implementation with the official state_dict key names,
shapes and order, validated against the golden numerics of the official model
(tests/test_reference_torch.py). It imports only torch, so it can also stand in for the
official `model/manet.py` in the `manet_jax.compare` tests.
"""

from __future__ import annotations

import torch
from torch import nn

SPATIAL_BN_MOMENTUM = 0.01
CASCADE_B_ORDER = {"2023": range(4, 0, -1), "2021": range(1, 5)}  # chunks in the order cascade B runs them


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN shortcut, created whenever the stride or the channel count changes."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """ResNet v1 basic block."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample(in_planes, planes, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class ChannelGate(nn.Module):
    """CBAM channel attention: one MLP applied to the average- and max-pooled vectors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(gate)[:, :, None, None]


class ConvBN(nn.Module):
    """7x7 conv (2 -> 1 channel, no bias) + one-channel BN of the CBAM spatial gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=SPATIAL_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """CBAM spatial attention on [max, mean] over channels (max first)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = ConvBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class AttentionBlock(BasicBlock):
    """Basic block with CBAM applied to the residual before the add (local attention module)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__(in_planes, planes, stride)
        self.cbam = CBAM(planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(super().residual(x))


class MulScaleBlock(nn.Module):
    """Bidirectional Res2Net-like multi-scale block (global multi-scale module).

    Cascade B runs chunk 4 -> 1 with `wiring="2023"` (the official code since 2023-04-15) and
    chunk 1 -> 4, like cascade A, with "2021" (the official code before; docs/conversion.md).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, wiring: str = "2023") -> None:
        super().__init__()
        if wiring not in CASCADE_B_ORDER:
            raise ValueError(f"wiring must be one of {tuple(CASCADE_B_ORDER)}, not {wiring!r}")
        width = planes // 4
        self.cascade_b_order = CASCADE_B_ORDER[wiring]
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        for cascade in (1, 2):
            for k in range(1, 5):
                setattr(self, f"conv{cascade}_2_{k}", conv3x3(width, width))
                setattr(self, f"bn{cascade}_2_{k}", nn.BatchNorm2d(width))
        self.downsample = downsample(in_planes, planes, stride)

    def cascade(self, chunks: tuple[torch.Tensor, ...], cascade: int, order: range) -> list[torch.Tensor]:
        """Runs `conv{cascade}_2_k`/`bn{cascade}_2_k` over the chunks k in `order`; outputs in chunk order."""
        out: dict[int, torch.Tensor] = {}
        previous = None
        for k in order:
            h = chunks[k - 1] if previous is None else self.relu(previous) + chunks[k - 1]
            previous = out[k] = getattr(self, f"bn{cascade}_2_{k}")(getattr(self, f"conv{cascade}_2_{k}")(h))
        return [out[k] for k in range(1, 5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        chunks = torch.chunk(self.relu(self.bn1(self.conv1(x))), 4, dim=1)
        forward_cascade = torch.cat(self.cascade(chunks, 1, range(1, 5)), dim=1)
        second_cascade = torch.cat(self.cascade(chunks, 2, self.cascade_b_order), dim=1)
        return self.relu(forward_cascade + second_cascade + identity)


def make_layer(block: type[nn.Module], in_planes: int, planes: int, stride: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(block(in_planes, planes, stride, **kwargs), block(planes, planes, **kwargs))


class MANet(nn.Module):
    """MA-Net: ResNet-18 stem/layer1/layer2, four local attention branches, one global multi-scale branch."""

    def __init__(self, num_classes: int = 12666, multiscale_wiring: str = "2023") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(BasicBlock, 64, 64, 1)
        self.layer2 = make_layer(BasicBlock, 64, 128, 2)
        for k in range(1, 5):
            setattr(self, f"layer3_1_p{k}", make_layer(AttentionBlock, 128, 256, 2))
            setattr(self, f"layer4_1_p{k}", make_layer(AttentionBlock, 256, 512, 1))
        self.layer3_2 = make_layer(MulScaleBlock, 128, 256, 2, wiring=multiscale_wiring)
        self.layer4_2 = make_layer(MulScaleBlock, 256, 512, 2, wiring=multiscale_wiring)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_1 = nn.Linear(512, num_classes)
        self.fc_2 = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def local_branch(self, k: int, patch: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer4_1_p{k}")(getattr(self, f"layer3_1_p{k}")(patch))

    def pre_extractor(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))

    def multi_scale(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer4_2(self.layer3_2(features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pre_extractor(x)
        half = features.shape[2] // 2  # the fixed 14x14 quadrants of the 28x28 map at 224x224
        top, bottom = slice(0, half), slice(half, 2 * half)
        quadrants = [features[:, :, rows, cols]
                     for rows, cols in ((top, top), (top, bottom), (bottom, top), (bottom, bottom))]
        p1, p2, p3, p4 = (self.local_branch(k, patch) for k, patch in enumerate(quadrants, start=1))
        local = torch.cat([torch.cat([p1, p2], dim=3), torch.cat([p3, p4], dim=3)], dim=2)
        logits_local = self.fc_1(torch.flatten(self.avgpool(local), 1))
        glob = self.multi_scale(features)
        logits_global = self.fc_2(torch.flatten(self.avgpool(glob), 1))
        return logits_local, logits_global


def manet() -> MANet:
    """The pre-training model (12,666 MS-Celeb-1M heads), as the official `manet()` factory builds it."""
    return MANet()
