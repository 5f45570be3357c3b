"""Face crops: box -> square, resized uint8 image, exactly as a model's CropConfig says."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .models.registry import CropConfig, ModelConfig

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


def crop_face(image: Image.Image, box: np.ndarray, config: ModelConfig) -> np.ndarray:
    """One face as a (S, S, C) uint8 array, C = config.channels, S = config.input_size."""
    crop = config.crop
    x1, y1, x2, y2 = crop_region(box, crop)
    ix1, iy1 = int(round(x1)), int(round(y1))
    ix2, iy2 = max(int(round(x2)), ix1 + 1), max(int(round(y2)), iy1 + 1)
    face = _crop_padded(image, (ix1, iy1, ix2, iy2), crop.pad_value)
    if crop.square == "pad" and face.width != face.height:
        side = max(face.size)
        canvas = Image.new(face.mode, (side, side), (crop.pad_value,) * len(face.getbands()))
        canvas.paste(face, ((side - face.width) // 2, (side - face.height) // 2))
        face = canvas
    if config.channels == 1:
        face = face.convert("L")
    size = config.input_size
    face = face.resize((size, size), _RESAMPLE[crop.resample])
    arr = np.asarray(face, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _crop_padded(image: Image.Image, region: tuple[int, int, int, int], fill: int) -> Image.Image:
    """Image.crop, with the part outside the image filled with ``fill``."""
    x1, y1, x2, y2 = region
    if x1 >= 0 and y1 >= 0 and x2 <= image.width and y2 <= image.height:
        return image.crop(region)
    out = Image.new(image.mode, (x2 - x1, y2 - y1), (fill,) * len(image.getbands()))
    inner = image.crop((max(x1, 0), max(y1, 0), min(x2, image.width), min(y2, image.height)))
    out.paste(inner, (max(x1, 0) - x1, max(y1, 0) - y1))
    return out


def crop_faces(image: Image.Image, boxes: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """All faces of one frame as a uint8 tensor (N, S, S, C) for ExpressionModel.predict."""
    s, c = config.input_size, config.channels
    if len(boxes) == 0:
        return torch.zeros((0, s, s, c), dtype=torch.uint8)
    return torch.from_numpy(np.stack([crop_face(image, b, config) for b in boxes]))
