"""face-api.js's FaceExpressionNet (MIT), ported to PyTorch: model ``faceapi-expression``.

The network, as face-api.js defines it (src/faceFeatureExtractor/FaceFeatureExtractor.ts,
denseBlock.ts, src/faceExpressionNet/FaceExpressionNet.ts):

* input: RGB 112x112, ``(pixel - [122.782, 117.001, 104.298]) / 255``;
* four dense blocks (32, 64, 128, 256 channels), each halving the resolution
  (112 -> 56 -> 28 -> 14 -> 7). A block has four convolutions: the first (stride 2) is a plain
  3x3 convolution in block 0 and a depthwise-separable one elsewhere; the other three are
  depthwise-separable, stride 1, and each takes the ReLU of the sum of all earlier outputs of the
  block (a densely connected block). The block returns the ReLU of the sum of all four;
* 7x7 average pooling (the whole 7x7 map), then a 256 -> 7 fully connected layer (logits;
  face-api applies a softmax).

Convolutions use TensorFlow's "same" padding, which for the stride-2 layers pads one more row
and column at the bottom/right than at the top/left; :class:`Conv2dSame` reproduces it exactly.

Weights: cage_cli/models/weights/faceapi_expression.pt, converted from face-api's
face_expression_model.bin by scripts/convert_faceapi_expression.py. Licence:
cage_cli/models/weights/LICENSE-faceapi.txt. Model card: docs/models/faceapi-expression.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import CropConfig, ModelConfig, register_model

#: face-api's output order (FACE_EXPRESSION_LABELS).
NATIVE_LABELS: tuple[str, ...] = (
    "neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised",
)
#: The same classes, as CAGE's canonical names (schema.EXPRESSIONS).
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral", "happy", "sad", "anger", "fear", "disgust", "surprise",
)
#: Mean RGB that face-api subtracts from 0..255 pixels before dividing by 255.
MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) along one axis; the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding (asymmetric when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric: the convolution pads (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        return self._conv_forward(F.pad(x, (left, right, top, bottom)), self.weight, self.bias)


class SeparableConv(nn.Module):
    """``tf.separableConv2d(x, depthwise, pointwise, stride, 'same') + bias``.

    A 3x3 depthwise convolution (no bias) followed by a 1x1 pointwise convolution that carries
    the layer's bias.
    """

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.depthwise = Conv2dSame(channels_in, channels_in, 3, stride=stride,
                                    groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
            return self.pointwise(x)
        # On a CPU the 1x1 convolution of channels-last maps is this matrix product, bit for
        # bit, but torch's convolution first fills its output with the bias one pixel's
        # channels at a time (as long as the product itself on 56x56 maps).
        n, c, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c),
                     self.pointwise.weight.view(-1, c), self.pointwise.bias)
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


class DenseBlock(nn.Module):
    """face-api's ``denseBlock4``: four convolutions, each fed the sum of the earlier outputs."""

    def __init__(self, channels_in: int, channels_out: int, first: bool = False):
        super().__init__()
        self.conv0: nn.Module = (
            Conv2dSame(channels_in, channels_out, 3, stride=2, bias=True)
            if first
            else SeparableConv(channels_in, channels_out, stride=2)
        )
        self.conv1 = SeparableConv(channels_out, channels_out)
        self.conv2 = SeparableConv(channels_out, channels_out)
        self.conv3 = SeparableConv(channels_out, channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the fresh sums (a + b == b + a in floating point): the same values as
        # relu(out1 + (out2 + out3)) etc., without a new tensor per operation.
        out1 = self.conv0(x).relu_()
        out2 = self.conv1(out1)
        out3 = self.conv2((out1 + out2).relu_())
        out4 = self.conv3((out2 + out3).add_(out1).relu_())
        return out4.add_(out3).add_(out2).add_(out1).relu_()


class FaceExpressionNet(nn.Module):
    """FaceFeatureExtractor (four dense blocks, 7x7 average pool) + a 256 -> 7 linear layer.

    Input: (N, 3, 112, 112) RGB, normalised as ``(pixel - MEAN_RGB) / 255``.
    Output: (N, 7) logits in face-api's order (:data:`NATIVE_LABELS`).
    """

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.dense0 = DenseBlock(3, 32, first=True)
        self.dense1 = DenseBlock(32, 64)
        self.dense2 = DenseBlock(64, 128)
        self.dense3 = DenseBlock(128, 256)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense3(self.dense2(self.dense1(self.dense0(x))))
        x = F.avg_pool2d(x, kernel_size=7, stride=2)  # tf.avgPool(x, [7, 7], [2, 2], 'valid')
        return self.fc(x.flatten(1))


register_model(
    ModelConfig(
        name="faceapi-expression",
        builder=FaceExpressionNet,
        description=(
            "face-api.js FaceExpressionNet (7 classes, no contempt): a 0.32M-parameter densely "
            "connected depthwise-separable CNN on 112x112 RGB crops, ported from TF.js to "
            "PyTorch; valence/arousal from AffectNet class centroids"
        ),
        input_size=112,
        channels=3,
        mean=tuple(m / 255 for m in MEAN_RGB),
        std=(1.0, 1.0, 1.0),
        classes=CANONICAL_CLASSES,
        va_method="centroid",
        # face-api crops the detection box as is, pads it to a square with black, centred
        # (NetInput.toBatchTensor(112, true) -> padToSquare), then resizes to 112 bilinearly.
        crop=CropConfig(margin=0.0, square="pad", pad_value=0, resample="tf_bilinear"),
        weights="faceapi_expression.pt",
        output="logits",
        licence="MIT (face-api.js)",
        training_data=(
            "Not published. face-api.js's author: 'a variety of images from publicly available "
            "datasets as well as images scraped from the web'; no dataset list, splits or "
            "accuracy given."
        ),
        card="docs/models/faceapi-expression.md",
    )
)
