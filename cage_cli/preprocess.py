"""Face crops: box -> square, resized uint8 image, exactly as a model's CropConfig says."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from .models.registry import CropConfig, ModelConfig

#: A whole frame: a Pillow image, or (H, W, C) uint8 pixels (only the parts around faces
#: are ever copied out of an array, so a big photo is never copied whole per face)
FrameImage = Image.Image | np.ndarray

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}


def crop_region(box: np.ndarray, crop: CropConfig) -> tuple[float, float, float, float]:
    """The frame region (x1, y1, x2, y2) a model sees for a face box, before any padding."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    dx = crop.margin * w + crop.margin_px
    dy = crop.margin * h + crop.margin_px
    x1, y1, x2, y2 = x1 - dx, y1 - dy, x2 + dx, y2 + dy
    if crop.square == "expand":
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return x1, y1, x2, y2


def crop_face(image: FrameImage, box: np.ndarray, config: ModelConfig) -> np.ndarray:
    """One face as a (S, S, C) uint8 array, C = config.channels, S = config.input_size."""
    crop = config.crop
    x1, y1, x2, y2 = crop_region(box, crop)
    ix1, iy1 = int(round(x1)), int(round(y1))
    ix2, iy2 = max(int(round(x2)), ix1 + 1), max(int(round(y2)), iy1 + 1)
    fill = pad_fill(image, crop, config.channels)
    face = _crop_padded(image, (ix1, iy1, ix2, iy2), fill)
    if crop.square == "pad" and face.width != face.height:
        side = max(face.size)
        canvas = Image.new(face.mode, (side, side), _fill_bands(fill, face))
        canvas.paste(face, ((side - face.width) // 2, (side - face.height) // 2))
        face = canvas
    if config.channels == 1:
        face = face.convert("L")
    size = config.input_size
    if crop.resample == "tf_bilinear":
        arr = tf_resize_bilinear(np.asarray(face), size)
    elif crop.resample == "cv2_linear":
        arr = cv2_resize_linear(np.asarray(face), size)
    else:
        arr = np.asarray(face.resize((size, size), _RESAMPLE[crop.resample]), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def tf_resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resample ``tf_bilinear``: TensorFlow's resize_bilinear with align_corners=False and
    half_pixel_centers=False (TF1 / TF.js default, used by face-api.js), rounded to uint8.

    Output pixel (r, c) samples the input at (r * H / size, c * W / size), no anti-aliasing.
    """
    h, w = image.shape[:2]
    img = image.reshape(h, w, -1)
    ys, xs = np.arange(size) * (h / size), np.arange(size) * (w / size)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    # Only the sampled rows become float: a big face's crop is never converted whole.
    r0, r1 = img[y0].astype(np.float64), img[y1].astype(np.float64)
    top = r0[:, x0] + (r0[:, x1] - r0[:, x0]) * fx
    bottom = r1[:, x0] + (r1[:, x1] - r1[:, x0]) * fx
    out = np.rint(top + (bottom - top) * fy).clip(0, 255).astype(np.uint8)
    return out.reshape((size, size) + image.shape[2:])


def cv2_resize_linear(image: np.ndarray, size: int) -> np.ndarray:
    """Resample ``cv2_linear``: OpenCV's ``cv2.resize(img, (size, size))`` (INTER_LINEAR) on uint8,
    as fer uses. No anti-aliasing: output pixel d samples the input at (d + 0.5) * n / size - 0.5,
    clamped to the image. Follows OpenCV's fixed-point arithmetic (11-bit weights, the rounding of
    its SIMD vertical pass): bit-identical to OpenCV 5.0 on x86 when shrinking (tested on random
    images), within 1 grey level when enlarging.
    """
    h, w = image.shape[:2]
    img = image.reshape(h, w, -1)
    y0, y1, wy0, wy1 = _cv2_linear_taps(h, size)
    x0, x1, wx0, wx1 = _cv2_linear_taps(w, size)
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    # Only the sampled rows become integers: a big face's crop is never converted whole.
    r0, r1 = img[y0].astype(np.int64), img[y1].astype(np.int64)
    top = r0[:, x0] * wx0 + r0[:, x1] * wx1  # rows scaled by 2**11
    bottom = r1[:, x0] * wx0 + r1[:, x1] * wx1
    wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
    out = (((wy0 * (top >> 4)) >> 16) + ((wy1 * (bottom >> 4)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8).reshape((size, size) + image.shape[2:])


def _cv2_linear_taps(n: int, size: int) -> tuple[np.ndarray, ...]:
    """Source indices i0, i1 and 11-bit weights w0, w1 of OpenCV's INTER_LINEAR on one axis."""
    f = ((np.arange(size) + 0.5) * (1.0 / (size / n)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    t = (f - i0).astype(np.float32)
    t[(i0 < 0) | (i0 >= n - 1)] = 0
    i0 = i0.clip(0, n - 1)
    w1 = np.rint(t * np.float32(2048)).astype(np.int64)
    w0 = np.rint((np.float32(1) - t) * np.float32(2048)).astype(np.int64)
    return i0, np.minimum(i0 + 1, n - 1), w0, w1


def pad_fill(image: FrameImage, crop: CropConfig, channels: int) -> int | tuple[int, ...]:
    """The value for pixels outside the frame: ``crop.pad_value``, or for "bottom_mean" the
    rounded mean of the frame's bottom two rows (of its grey version for 1-channel models, per
    channel otherwise), as fer pads its grey image."""
    if crop.pad_value != "bottom_mean":
        return crop.pad_value
    width, height = _size(image)
    bottom = _cut(image, (0, height - 2, width, height))
    if channels == 1:
        bottom = bottom.convert("L")  # an RGB pixel (v, v, v) converts back to v
    means = np.asarray(bottom, dtype=np.float64).reshape(-1, len(bottom.getbands())).mean(axis=0)
    fill = tuple(int(round(float(m))) for m in means)
    return fill[0] if len(fill) == 1 else fill


def _fill_bands(fill: int | tuple[int, ...], image: Image.Image) -> tuple[int, ...]:
    return fill if isinstance(fill, tuple) else (fill,) * len(image.getbands())


def _size(image: FrameImage) -> tuple[int, int]:
    """Width, height."""
    return image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])


def _cut(image: FrameImage, region: tuple[int, int, int, int]) -> Image.Image:
    """The region (inside the frame) as a Pillow image."""
    if isinstance(image, Image.Image):
        return image.crop(region)
    x1, y1, x2, y2 = region
    return Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))


def _crop_padded(image: FrameImage, region: tuple[int, int, int, int],
                 fill: int | tuple[int, ...]) -> Image.Image:
    """Image.crop, with the part outside the image filled with ``fill``."""
    x1, y1, x2, y2 = region
    width, height = _size(image)
    if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
        return _cut(image, region)
    inner = _cut(image, (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)))
    out = Image.new(inner.mode, (x2 - x1, y2 - y1), _fill_bands(fill, inner))
    out.paste(inner, (max(x1, 0) - x1, max(y1, 0) - y1))
    return out


def crop_faces(image: FrameImage, boxes: np.ndarray, config: ModelConfig,
               whole: bool = False) -> torch.Tensor:
    """All faces of one frame as a uint8 tensor (N, S, S, C) for ExpressionModel.predict.

    ``whole``: the box is the whole (pre-cropped) image, so no margin is added around it.
    """
    s, c = config.input_size, config.channels
    if len(boxes) == 0:
        return torch.zeros((0, s, s, c), dtype=torch.uint8)
    if whole:
        config = whole_image_config(config)
    return torch.from_numpy(np.stack([crop_face(image, b, config) for b in boxes]))


def whole_image_config(config: ModelConfig) -> ModelConfig:
    """A pre-cropped face is the model's input region already: square it, add no margin."""
    return replace(config, crop=replace(config.crop, margin=0.0, margin_px=0.0))
