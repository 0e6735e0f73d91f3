"""The three model roles and the architecture families they can use.

Every family is sized from the input when it is built, so one definition serves 8x8 digits and
128x128 camera crops: the first layer strides only as much as keeps the working grid at or below
32 (or 8 patches a side for the mixer), and the head pools with both the mean and the maximum, so
a defect a few pixels wide still reaches the classifier instead of being averaged away.

- champion (`resnet`): a small residual CNN; it serves production, so it stays fast on one thread.
- b1 (`dilated`): a plain CNN that standardises each image (brightness and contrast drift do not
  move its input) and widens its view with dilated convolutions instead of pooling.
- b2 (`gradient`): a different family, depthwise-separable convolutions over the image and its
  Sobel gradients, so its mistakes are unlikely to coincide with B1's and their agreement carries
  information.
- `mixer`, an MLP-Mixer over raw pixel patches, is a further family to choose: 0.99 on digits,
  but 0.67 on the parts line, where 1,500 training images are too few for it.

Every model takes float32 (N, 1, H, W) in [0, 1] and returns logits (N, classes); its exported
`embed` returns the penultimate layer (N, 128), the features the input-drift test compares.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import nn

Role = Literal["champion", "b1", "b2"]
ROLES: tuple[Role, ...] = ("champion", "b1", "b2")
DEFAULT_FAMILIES: dict[Role, str] = {"champion": "resnet", "b1": "dilated", "b2": "gradient"}


class Standardize(nn.Module):
    """Per-image zero mean, unit variance: removes global brightness and contrast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


class MeanMaxPool(nn.Module):
    """Global mean and max over the grid, concatenated: the max keeps a small, strong response."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def conv_bn(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
    )


def stem_stride(image_size: tuple[int, int], grid: int) -> int:
    """The stride that brings the shorter side down to at most `grid` (1 for small images)."""
    return max(1, math.ceil(min(image_size) / grid))


class ResidualBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(inputs, outputs, stride), nn.ReLU(), conv_bn(outputs, outputs))
        self.skip = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResidualCNN(nn.Module):
    """Stem at full resolution (up to 32 px), then three residual stages of 16, 32 and 64 channels."""

    def __init__(self, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16, stem_stride(image_size, 32)), nn.ReLU(),
            ResidualBlock(16, 16, 1), ResidualBlock(16, 32, 2), ResidualBlock(32, 64, 2),
            MeanMaxPool(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DilatedCNN(nn.Module):
    """Standardised input, then convolutions whose dilation (1, 2, 4) widens the view while the
    grid stays at full resolution; one stride-2 step before the head keeps the cost down."""

    def __init__(self, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.features = nn.Sequential(
            conv_bn(1, 24, stem_stride(image_size, 32)), nn.ReLU(),
            conv_bn(24, 24, dilation=2), nn.ReLU(),
            conv_bn(24, 48, dilation=4), nn.ReLU(),
            conv_bn(48, 64, stride=2), nn.ReLU(),
            MeanMaxPool(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.standardize(x))


class MixerBlock(nn.Module):
    """Token mixing across patches, then channel mixing within each, each with a residual."""

    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(channels)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_norm = nn.LayerNorm(channels)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(),
                                         nn.Linear(2 * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, tokens, channels)
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class PatchMixer(nn.Module):
    """Standardised input cut into patches (at most 8 a side), each embedded linearly from its
    raw pixels, then two mixer blocks and a mean-and-max over the patches."""

    def __init__(self, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        patch = stem_stride(image_size, 8)
        tokens = math.ceil(image_size[0] / patch) * math.ceil(image_size[1] / patch)
        self.standardize = Standardize()
        self.patches = nn.Conv2d(1, 64, patch, stride=patch, padding=0)
        self.pad = nn.ZeroPad2d((0, -image_size[1] % patch, 0, -image_size[0] % patch))
        self.blocks = nn.Sequential(MixerBlock(tokens, 64), MixerBlock(tokens, 64))
        self.norm = nn.LayerNorm(64)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(self.pad(self.standardize(x))).flatten(2).transpose(1, 2)
        tokens = self.norm(self.blocks(tokens))
        return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1)


class GradientSeparableCNN(nn.Module):
    """Standardised input plus its horizontal and vertical gradients (fixed Sobel filters: thin
    edges are what a defect is), through depthwise-separable convolutions whose dilation widens
    the view at full resolution, one stride-2 step, and a mean-and-max head."""

    def __init__(self, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.standardize = Standardize()
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("gradients", torch.stack([sobel, sobel.t()]).unsqueeze(1))
        self.features = nn.Sequential(
            conv_bn(3, 32, stem_stride(image_size, 32)), nn.ReLU(),
            separable(32, 32, dilation=2), separable(32, 48, dilation=4), separable(48, 64, stride=2),
            MeanMaxPool(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        edges = nn.functional.conv2d(x, self.gradients, padding=1).abs()
        return self.features(torch.cat([x, edges], dim=1))


def separable(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """A depthwise 3x3 convolution, then a pointwise one, batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(inputs, inputs, 3, stride=stride, padding=dilation, dilation=dilation, groups=inputs, bias=False),
        nn.Conv2d(inputs, outputs, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(),
    )


FAMILIES: dict[str, Callable[[int, tuple[int, int]], nn.Module]] = {
    "resnet": ResidualCNN,
    "dilated": DilatedCNN,
    "mixer": PatchMixer,
    "gradient": GradientSeparableCNN,
}


def build_model(role: Role, num_classes: int, image_size: tuple[int, int], family: str | None = None) -> nn.Module:
    """A freshly initialised model for `role` (its default family unless `family` names another)
    for images of `image_size` (height, width)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if role not in DEFAULT_FAMILIES:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    family = family or DEFAULT_FAMILIES[role]
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} for {role}; expected one of {', '.join(FAMILIES)}")
    if min(image_size) < 4:
        raise ValueError(f"images must be at least 4x4 pixels, got {image_size[0]}x{image_size[1]}")
    return FAMILIES[family](num_classes, tuple(image_size))
