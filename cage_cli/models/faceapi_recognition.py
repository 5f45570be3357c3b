"""face-api.js's FaceRecognitionNet (MIT), ported to PyTorch: model ``faceapi-recognition``.

A face-embedding model: one 150x150 RGB face in, a 128-D descriptor out. face-api.js's network
is a TF.js re-implementation of dlib's ``dlib_face_recognition_resnet_model_v1`` (a ResNet with
29 convolutions trained by Davis King); face-api compares descriptors by Euclidean distance,
0.6 meaning "same person" in its own examples. The network, as face-api defines it
(src/faceRecognitionNet/FaceRecognitionNet.ts, convLayer.ts, residualLayer.ts, scaleLayer.ts):

* input: RGB 150x150, ``(pixel - [122.782, 117.001, 104.298]) / 255``;
* ``conv32_down``: 7x7 convolution, stride 2, "valid" (150 -> 72), a per-channel scale layer
  (``x * w + b``, dlib's affine layer that replaced batch norm), ReLU; 3x3 max pool, stride 2,
  "valid" (72 -> 35);
* residual blocks: ``relu(x + scale(conv(relu(scale(conv(x))))))`` with 3x3 "same"
  convolutions; a down block's first convolution has stride 2 and "valid" padding, its shortcut
  is a 2x2 average pool (stride 2) with zero channels appended where the width doubles, and
  where the pooled map is one pixel larger than the convolution's output (8 -> 3 vs 4, 4 -> 1
  vs 2) the output gets a zero row at the bottom and a zero column at the right first;
  3 x 32, down + 3 x 64, down + 2 x 128, down + 2 x 256, down (35 -> 17 -> 8 -> 4 -> 2);
* mean over the 2x2 map, then a 256 -> 128 matrix product (no bias).

Weights: cage_cli/models/weights/faceapi_recognition.pt holds face-api's own tensors, by
face-api's names, as face_recognition_model.bin stores them (mostly uint8 with a per-tensor
scale and min: 6.5 MB instead of 22 MB as float32); written by
scripts/convert_faceapi_recognition.py. On loading, :func:`unpack_state_dict` dequantises them
exactly as tf.io.decodeWeights does and folds each convolution's bias and scale layer into the
convolution (``w' = w * s``, ``b' = b * s + t``, float64), so every layer here is a plain
``nn.Conv2d``. Licence:
cage_cli/models/weights/LICENSE-faceapi.txt. Model card: docs/models/faceapi-recognition.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faceapi import MEAN_RGB
from .registry import CropConfig, ModelConfig, register_model

#: Input side in pixels (face-api: ``toBatchTensor(150, true)``).
INPUT_SIZE = 150
#: Descriptor length.
EMBEDDING_SIZE = 128
#: face-api's residual blocks, in order.
RESIDUALS = ("conv32_1", "conv32_2", "conv32_3", "conv64_down", "conv64_1", "conv64_2",
             "conv64_3", "conv128_down", "conv128_1", "conv128_2", "conv256_down", "conv256_1",
             "conv256_2", "conv256_down_out")
#: In the stored form, a uint8 tensor NAME comes with 0-d float64 tensors NAME:scale, NAME:min.
SCALE, MIN = ":scale", ":min"


def dequantize(packed: dict[str, torch.Tensor], name: str) -> np.ndarray:
    """One of face-api's tensors as float32: ``q * scale + min`` in float64 (tfjs'
    decodeWeights), or as stored when it is not quantised."""
    t = packed[name]
    if t.dtype == torch.uint8:
        scale, low = float(packed[name + SCALE]), float(packed[name + MIN])
        return (t.numpy().astype(np.float64) * scale + low).astype(np.float32)
    return t.numpy().astype(np.float32)


def unpack_state_dict(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """face-api's tensors (by face-api's names, TF layouts) -> FaceRecognitionNet's state dict.

    ``scale(conv(x) + bias) = (conv(x) + bias) * s + t`` is folded into one convolution; TF.js
    layouts become PyTorch's: filters (kh, kw, in, out) -> (out, in, kh, kw), fc (in, out) ->
    (out, in). A state dict already in this network's form is returned as it is.
    """
    if not any("/" in k for k in packed):
        return packed
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in packed:
            raise KeyError(f"missing tensor {name}")
        used.update((name, name + SCALE, name + MIN))
        return dequantize(packed, name).astype(np.float64)

    sd: dict[str, np.ndarray] = {}

    def conv_layer(src: str, dst: str) -> None:
        s, t = take(f"{src}/scale/weights"), take(f"{src}/scale/biases")
        sd[f"{dst}.weight"] = (take(f"{src}/conv/filters") * s).transpose(3, 2, 0, 1)
        sd[f"{dst}.bias"] = take(f"{src}/conv/bias") * s + t

    conv_layer("conv32_down", "conv32_down")
    for block in RESIDUALS:
        conv_layer(f"{block}/conv1", f"{block}.conv1")
        conv_layer(f"{block}/conv2", f"{block}.conv2")
    sd["fc.weight"] = take("fc").T
    unused = sorted(set(packed) - used)
    if unused:
        raise KeyError(f"unexpected tensors {', '.join(unused[:5])}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}


class Residual(nn.Module):
    """face-api's ``residual`` / ``residualDown`` (with ``down``)."""

    def __init__(self, channels_in: int, channels_out: int, down: bool = False):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=2 if down else 1,
                               padding=0 if down else 1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2, 2)
        if shortcut.shape[-2:] != out.shape[-2:]:  # a zero row (bottom) and column (right)
            out = F.pad(out, (0, 1, 0, 1))
        if shortcut.shape[1] != out.shape[1]:  # zero channels after the pooled ones
            shortcut = torch.cat([shortcut, torch.zeros_like(shortcut)], dim=1)
        return F.relu(shortcut + out)


class FaceRecognitionNet(nn.Module):
    """Input: (N, 3, 150, 150) RGB, normalised as ``(pixel - MEAN_RGB) / 255``.
    Output: (N, 128) descriptors (not normalised; face-api's values)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = nn.Conv2d(3, 32, 7, stride=2)
        self.conv32_1 = Residual(32, 32)
        self.conv32_2 = Residual(32, 32)
        self.conv32_3 = Residual(32, 32)
        self.conv64_down = Residual(32, 64, down=True)
        self.conv64_1 = Residual(64, 64)
        self.conv64_2 = Residual(64, 64)
        self.conv64_3 = Residual(64, 64)
        self.conv128_down = Residual(64, 128, down=True)
        self.conv128_1 = Residual(128, 128)
        self.conv128_2 = Residual(128, 128)
        self.conv256_down = Residual(128, 256, down=True)
        self.conv256_1 = Residual(256, 256)
        self.conv256_2 = Residual(256, 256)
        self.conv256_down_out = Residual(256, 256, down=True)
        self.fc = nn.Linear(256, EMBEDDING_SIZE, bias=False)

    unpack_state_dict = staticmethod(unpack_state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv32_down(x)), 3, 2)
        for name in RESIDUALS:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))


register_model(
    ModelConfig(
        name="faceapi-recognition",
        kind="embedding",
        builder=FaceRecognitionNet,
        description=(
            "face-api.js FaceRecognitionNet: dlib's face recognition ResNet (29 convolutions, "
            "5.6M parameters) giving 128-D descriptors of 150x150 RGB faces, ported from TF.js "
            "to PyTorch; Euclidean distance, face-api's own 'same person' threshold 0.6"
        ),
        input_size=INPUT_SIZE,
        channels=3,
        mean=tuple(m / 255 for m in MEAN_RGB),
        std=(1.0, 1.0, 1.0),
        classes=(),
        va_method="none",
        # The box crop face-api makes (pad to a square with black, TF bilinear resize to 150);
        # annotation.identity.embed aligns faces on their landmarks instead (better, measured).
        crop=CropConfig(margin=0.0, square="pad", pad_value=0, resample="tf_bilinear"),
        weights="faceapi_recognition.pt",
        output="embedding",
        embedding_size=EMBEDDING_SIZE,
        licence="MIT (face-api.js)",
        training_data=(
            "dlib's dlib_face_recognition_resnet_model_v1 (Davis King): about 3 million faces "
            "of about 7500 identities from FaceScrub, VGG Face and images scraped from the web "
            "(dlib's own description); face-api.js ported the network and weights"
        ),
        card="docs/models/faceapi-recognition.md",
    )
)
