"""Face crops for the face-embedding model, and batched embedding (``faceapi-recognition``).

Embeddings are biometric data: nothing here runs unless a caller asks for identities.

A face is *aligned* on MTCNN's five landmarks (eye centres, nose tip, mouth corners): the
similarity transform (rotation, uniform scale, shift; least squares) that maps the five points
onto a canonical template, so that the eyes are level and every face sits at the same place in
the 150x150 crop. The template is dlib's own chip geometry, the one its face recognition ResNet
was trained on (``get_face_chip_details(shape, 150, 0.25)`` in dlib's dnn_face_recognition_ex):
dlib's mean face shape (points 36-41 and 42-47 averaged for the eye centres, 30 the nose tip, 48
and 54 the mouth corners), with 25 % padding on each side. Measured on ../shared/identity/wild's
verification pairs in docs/persons.md: aligned crops are far better than box crops.

Faces without landmarks (``--detector none``: NaN) fall back to face-api's box crop (pad to a
square with black, TF bilinear resize to 150).

Descriptors are returned as the network gives them (not normalised), so that distances are
face-api's and dlib's: Euclidean, with 0.6 their "same person" threshold (too loose for
studio photos of different people; cage_cli.annotation.identity.linkage's default is 0.45, measured
in docs/persons.md). Their norms are about 1.4-1.6.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ...preprocess import FrameImage, crop_faces

if TYPE_CHECKING:  # pragma: no cover
    from ...models import EmbeddingModel

#: The default face-embedding model.
EMBEDDING_MODEL = "faceapi-recognition"
#: Side of the aligned crop (the model's input).
CROP_SIZE = 150
#: dlib's chip padding for its face recognition model (fraction of the face on each side).
PADDING = 0.25
#: dlib's mean face shape (points 17-67, 0..1 in the face's box) at the five MTCNN points,
#: in MTCNN's order: left eye (image left), right eye, nose tip, left and right mouth corner.
MEAN_FACE_5 = np.array([
    [0.2254918, 0.2159903],   # mean of points 36-41
    [0.7547613, 0.2159903],   # mean of points 42-47
    [0.490127, 0.515625],     # point 30
    [0.254149, 0.780233],     # point 48
    [0.726104, 0.780233],     # point 54
])


def template(size: int = CROP_SIZE, padding: float = PADDING) -> np.ndarray:
    """The five landmark positions (5, 2) in a ``size`` crop, in pixel-index coordinates."""
    return (padding + MEAN_FACE_5) / (2 * padding + 1) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) that maps ``src`` (K, 2) onto
    ``dst`` (K, 2) in the least-squares sense (Umeyama 1991, without reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / s.var(0).sum())
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def _as_pil(image: FrameImage) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def align_face(image: FrameImage, landmarks: np.ndarray, size: int = CROP_SIZE,
               padding: float = PADDING) -> np.ndarray:
    """The face with these five landmarks (5, 2), MTCNN's order, in ``image``'s pixels, as an
    aligned (size, size, 3) uint8 RGB crop (outside the image: black).

    Sampling is bilinear. Where the face is more than twice the crop's size, its region is first
    shrunk by an integer factor (box filter), as dlib's extract_image_chip shrinks by a pyramid,
    so that big faces are not aliased.
    """
    pil = _as_pil(image).convert("RGB")
    # crop pixel index -> image pixel index; PIL samples at pixel centres (index + 0.5)
    m = similarity_transform(template(size, padding), np.asarray(landmarks, np.float64))
    a, t = m[:, :2], m[:, 2] + 0.5 - m[:, :2] @ [0.5, 0.5]  # continuous crop -> image coords
    factor = int(np.sqrt(abs(np.linalg.det(a))))  # image pixels per crop pixel
    if factor >= 2:
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ a.T + t
        lo = np.floor(corners.min(0)) - factor
        hi = np.ceil(corners.max(0)) + factor
        lo -= lo % factor  # keep the grid of the shrunk image aligned with the image's
        region = pil.crop((int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))).reduce(factor)
        pil, a, t = region, a / factor, (t - lo) / factor
    data = (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])
    out = pil.transform((size, size), Image.Transform.AFFINE, data,
                        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)


def face_crops(image: FrameImage, landmarks: np.ndarray, boxes: np.ndarray | None = None,
               model: EmbeddingModel | None = None) -> np.ndarray:
    """The embedding model's crops (K, 150, 150, 3) uint8 of one frame's faces: aligned on
    ``landmarks`` (K, 5, 2); a face whose landmarks are not finite gets face-api's box crop of
    its ``boxes`` row (K, 4: x1, y1, x2, y2), which must then be given."""
    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    out = np.zeros((len(landmarks), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, marks in enumerate(landmarks):
        if np.isfinite(marks).all():
            out[i] = align_face(image, marks)
        elif boxes is None:
            raise ValueError(f"face {i} has no landmarks and no box")
        else:
            out[i] = box_crops(image, np.asarray(boxes)[i:i + 1], model)[0]
    return out


def box_crops(image: FrameImage, boxes: np.ndarray, model: EmbeddingModel | None = None
              ) -> np.ndarray:
    """face-api's own crops of these boxes (K, 4): the box as is, padded to a square with black,
    TF bilinear resize to 150 (K, 150, 150, 3) uint8. Worse than aligned crops (measured)."""
    from ...models import get_config

    config = model.config if model is not None else get_config(EMBEDDING_MODEL)
    return crop_faces(image, np.asarray(boxes, np.float32), config).numpy()


def load_embedding_model(weights: str | None = None, device: str = "cpu",
                         precision: str = "fp32") -> EmbeddingModel:
    """The bundled face-embedding model (``faceapi-recognition``), or ``weights``.
    Raises cage_cli.models.ModelError with a one-line message when it cannot be loaded."""
    from ...models import create_embedding_model

    return create_embedding_model(EMBEDDING_MODEL, weights, device, precision)


def embed_crops(crops: np.ndarray, model: EmbeddingModel | None = None,
                batch_size: int = 16) -> np.ndarray:
    """Descriptors (N, 128) float32 of crops (N, 150, 150, 3) uint8, ``batch_size`` at a time."""
    model = model or load_embedding_model()
    parts = [model.embed(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.embedding_size),
                                                        np.float32)


def embed_faces(images: Sequence[FrameImage], landmarks: np.ndarray | Sequence[np.ndarray],
                model: EmbeddingModel | None = None, batch_size: int = 16,
                boxes: np.ndarray | Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Descriptors (N, 128) float32 of N faces: ``images[i]`` is the frame (or photo) holding
    face i (the same frame may be passed for several faces), ``landmarks[i]`` its five MTCNN
    landmarks (5, 2), ``boxes[i]`` its box (x1, y1, x2, y2), used where the landmarks are NaN.

    Not normalised: compare with Euclidean distance (face-api's and dlib's convention).
    """
    marks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    if len(images) != len(marks):
        raise ValueError(f"{len(images)} images for {len(marks)} landmark sets")
    bx = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = np.zeros((len(marks), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, (image, m) in enumerate(zip(images, marks, strict=True)):
        crops[i] = face_crops(image, m[None], None if bx is None else bx[i:i + 1], model)[0]
    return embed_crops(crops, model, batch_size)


def face_quality(landmarks: np.ndarray) -> np.ndarray:
    """How well suited each face (K, 5, 2 landmarks) is for embedding, (K,) float in [0, 1]
    (0: no landmarks): size (eye distance, full at 40 px and more) times frontality (1 when the
    nose tip is midway between the eyes, 0 when it is level with one eye: a profile). Use it to
    pick the few faces of a track to embed."""
    m = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    eyes = m[:, 1] - m[:, 0]
    span = np.linalg.norm(eyes, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # the nose's offset from the eyes' midpoint, along the eye line, in half eye distances
        along = ((m[:, 2] - (m[:, 0] + m[:, 1]) / 2) * eyes).sum(1) / (span * span / 2)
        q = np.clip(span / 40, 0, 1) * np.clip(1 - np.abs(along), 0, 1)
    return np.where(np.isfinite(q), q, 0.0)


def distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances (N, M) between descriptors ``a`` (N, D) and ``b`` (M, D; default a)."""
    a = np.asarray(a, np.float64)
    b = a if b is None else np.asarray(b, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))
