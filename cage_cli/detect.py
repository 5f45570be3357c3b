"""Stage 3: find faces. MTCNN (facenet-pytorch's networks, run by cage_cli.mtcnn).

Detection can run on a downscaled copy of each frame (``det_max_side``); boxes and landmarks
are mapped back to full-resolution pixels, and crops are always cut from the full frame.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cage_cli.workers import Results

if TYPE_CHECKING:  # pragma: no cover - torch loads when a Detector is built, not for --help
    import torch

DETECTORS = ("mtcnn", "auto", "none")


@dataclass
class Faces:
    """Detections of one frame, in full-resolution pixels."""

    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (K,) float32; NaN where no detector ran
    landmarks: np.ndarray  # (K, 5, 2) float32; NaN where no detector ran
    source: str = "detected"  # detected | padded | whole_image
    track_ids: np.ndarray | None = None  # (K,) int32 in videos (cage_cli.track); None: none
    error: str | None = None  # why detection failed on this frame (then there are no faces)

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 5, 2), np.float32))

    @classmethod
    def whole(cls, width: int, height: int) -> Faces:
        """One face covering the whole frame (pre-cropped faces, --detector none)."""
        return cls(np.array([[0, 0, width, height]], np.float32), np.full(1, np.nan, np.float32),
                   np.full((1, 5, 2), np.nan, np.float32), "whole_image")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class DetectOptions:
    detector: str = "mtcnn"  # mtcnn | auto | none
    threshold: float = 0.9  # final-stage probability
    min_face: float = 20.0  # pixels, shorter box side at full resolution
    max_faces: int | None = None  # keep the K largest
    max_side: int | None = 960  # detect on a copy whose longer side is at most this...
    #: ...but never so small that a face this many pixels tall (full resolution) is smaller
    #: than this where MTCNN looks: in video frames 16 px (0.4 of full resolution: 4K recall
    #: 0.95, 0.90 at 12 px), in photos 12 px, MTCNN's smallest window (0.3: every 40-150 px
    #: face of a 48 MP group photo, and 51 MP photos in bounded time and memory). Chosen by
    #: benchmarks/big_photos.py (docs/performance.md, "Photos of any size").
    face_floor: float = 40.0
    floor_px_video: float = 16.0
    floor_px_photo: float = 12.0
    #: --detector auto: borders tried in turn (each side, fraction of the image size), chosen
    #: by benchmarks/crop_recall.py (docs/performance.md)
    pads: tuple[float, ...] = (0.1, 0.35)
    #: --detector auto: images whose longer side is at most this fall back to the whole image
    whole_max_side: int = 160


#: Frames over this many pixels are downscaled in strips of rows (big photos)
STRIP_PIXELS = 2**24


def downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (width, height) by Pillow, bilinear. Pillow holds RGB in
    4 bytes per pixel, so a frame over STRIP_PIXELS goes through in strips of rows, each
    with the source rows its output rows need, instead of as one whole-frame copy."""
    h, w = image.shape[:2]
    if h * w <= STRIP_PIXELS:
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR,
                                                        reducing_gap=3.0))
    sy = h / size[1]
    out = np.empty((size[1], size[0]) + image.shape[2:], np.uint8)
    step = max(1, int(STRIP_PIXELS // 4 // w / sy))  # output rows per strip
    for top in range(0, size[1], step):
        bottom = min(size[1], top + step)
        # Bilinear reads sy source rows either side of each output row's centre.
        y0 = max(0, int(top * sy - sy) - 2)
        y1 = min(h, int(bottom * sy + sy) + 3)
        strip = Image.fromarray(image[y0:y1])
        out[top:bottom] = np.asarray(strip.resize(
            (size[0], bottom - top), Image.Resampling.BILINEAR,
            box=(0, top * sy - y0, w, bottom * sy - y0)))
    return out


class Detector:
    """MTCNN with our thresholds; call with a list of (H, W, 3) uint8 frames.

    With a ``pool`` (cage_cli.workers: threads with one torch thread each), frames
    on the CPU are detected in parallel, one per thread: MTCNN's many small operators scale
    poorly over intra-op threads, and whole frames in parallel are faster (measured in
    docs/performance.md).
    """

    def __init__(self, options: DetectOptions, device: torch.device | str = "cpu",
                 pool: Executor | None = None):
        import torch

        from cage_cli.mtcnn import MTCNN

        self.options = options
        self.device = torch.device(device)
        self.mtcnn = MTCNN(self.device)
        self._pool = pool if self.device.type == "cpu" else None

    def __call__(self, images: list[np.ndarray], is_image: list[bool] | None = None) -> list[Faces]:
        """Faces of each frame; ``is_image`` marks photos (--detector auto retries those)."""
        return self.submit(images, is_image).get()

    def submit(self, images: list[np.ndarray], is_image: list[bool] | None = None) -> Results:
        """Start detecting. On the CPU the frames go to the worker pool, one per task, so
        the caller can do other work meanwhile; on an accelerator they are detected now."""
        flags = is_image if is_image is not None else [True] * len(images)
        if self.options.detector == "none":
            return Results([Faces.whole(im.shape[1], im.shape[0]) for im in images])
        if self.device.type == "cpu":
            return Results.map(self._pool, self._one, images, flags)
        faces: list[Faces | None] = [None] * len(images)
        for kind in set(flags):
            idx = [i for i, f in enumerate(flags) if f == kind]
            for i, d in zip(idx, self.detect([images[i] for i in idx], kind), strict=True):
                faces[i] = self._auto(images[i], kind, d)
        return Results(faces)

    def _one(self, image: np.ndarray, is_image: bool) -> Faces:
        try:
            return self._auto(image, is_image, self._detect_same_size([image], is_image)[0])
        except MemoryError:  # one frame too big for this machine must not end the run
            faces = Faces.empty()
            faces.error = "out of memory while detecting faces"
            return faces

    def _auto(self, image: np.ndarray, is_image: bool, faces: Faces) -> Faces:
        """--detector auto: a photo without a face gets another try (padded, whole)."""
        if not len(faces) and is_image and self.options.detector == "auto":
            return self._retry(image)
        return faces

    def detect(self, images: list[np.ndarray], is_image: bool = False) -> list[Faces]:
        """MTCNN on each frame (video frames, or photos with ``is_image``), in this thread.
        On a GPU, one batched call per group of equal-size frames.

        On the CPU every frame gets its own call: a batched call is no faster there
        (measured), and it gives slightly different boxes (float rounding) depending on
        which frames share the batch, so single calls keep rows identical however a run is
        grouped, interrupted or resumed.
        """
        if self.device.type == "cpu":
            return [self._detect_same_size([im], is_image)[0] for im in images]
        out: list[Faces | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for idx in groups.values():
            for i, faces in zip(idx, self._detect_same_size([images[i] for i in idx], is_image),
                                strict=True):
                out[i] = faces
        return out  # type: ignore[return-value]

    def scale(self, width: int, height: int, is_image: bool = False) -> float:
        """The detection copy's size relative to a width x height frame (or photo)."""
        o = self.options
        if not o.max_side or max(width, height) <= o.max_side:
            return 1.0
        floor = (o.floor_px_photo if is_image else o.floor_px_video) / o.face_floor
        return min(1.0, max(o.max_side / max(width, height), floor))

    def _detect_same_size(self, images: list[np.ndarray], is_image: bool = False) -> list[Faces]:
        o = self.options
        h, w = images[0].shape[:2]
        scale = self.scale(w, h, is_image)
        if scale != 1.0:  # Pillow per frame: no float copy of a huge frame or batch
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            images = [downscale(im, size) for im in images]
            scale_x, scale_y = size[0] / w, size[1] / h
        else:
            scale_x = scale_y = 1.0
        # MTCNN's pyramid starts at min_face (in detection pixels): smaller is slower.
        min_face = max(12, int(o.min_face * min(scale_x, scale_y)))
        result = []
        for b, lm in self.mtcnn(np.stack(images), min_face):
            b = b / np.array([scale_x, scale_y] * 2 + [1], np.float32)
            lm = lm / np.array([scale_x, scale_y], np.float32)
            result.append(self._filter(b[:, :4], b[:, 4], lm, w, h))
        return result

    def _filter(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
                width: int, height: int) -> Faces:
        o = self.options
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (scores >= o.threshold) & (side >= o.min_face)
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        if o.max_faces is not None and len(boxes) > o.max_faces:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            top = np.sort(np.argsort(-area, kind="stable")[: o.max_faces])
            boxes, scores, landmarks = boxes[top], scores[top], landmarks[top]
        return Faces(boxes, scores, landmarks)

    def _retry(self, image: np.ndarray) -> Faces:
        """--detector auto, for an image with no face: detect on padded copies, then fall
        back to the whole image if it is small (likely a pre-cropped face)."""
        o = self.options
        h, w = image.shape[:2]
        for pad in o.pads:
            py, px = int(round(h * pad)), int(round(w * pad))
            padded = np.zeros((h + 2 * py, w + 2 * px, 3), np.uint8)
            padded[py : py + h, px : px + w] = image
            faces = self.detect([padded], True)[0]
            if len(faces):
                faces.boxes -= np.array([px, py, px, py], np.float32)
                faces.landmarks -= np.array([px, py], np.float32)
                faces.boxes[:, [0, 2]] = faces.boxes[:, [0, 2]].clip(0, w)
                faces.boxes[:, [1, 3]] = faces.boxes[:, [1, 3]].clip(0, h)
                faces.source = "padded"
                return faces
        if max(h, w) <= o.whole_max_side:
            return Faces.whole(w, h)
        return Faces.empty()
