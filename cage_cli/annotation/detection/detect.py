"""Stage 3: find faces. MTCNN (facenet-pytorch's networks, run by ``detection.mtcnn``).

Detection can run on a downscaled copy of each frame (``det_max_side``); boxes and landmarks
are mapped back to full-resolution pixels, and crops are always cut from the full frame.

Videos are detected in *chunks* (--detect-every K): full MTCNN on a keyframe (the first sampled
frame of each block of K video frames, and the first after a cut:
cage_cli.annotation.running.pipeline) and the sampled frames after it up to the next keyframe. Each
face found on the keyframe is searched for again, frame by frame, by MTCNN in a window around where
it is predicted to be (``MTCNN.near``: the boxes are those full detection gives; ``face_source``
"tracked"). A face not found there has no row in that frame (no guessed boxes); it is searched for
again in the chunk's next frames, from where it was last seen. New faces appear at the next
keyframe. Each face found between keyframes carries a *link*: the index of the keyframe face it
continues (cage_cli.annotation.detection.track gives it that face's id). A chunk depends only on
its own frames, so chunks are detected in parallel, and rows do not depend on how frames are
grouped.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..running.workers import Results
from .track import box_iou

if TYPE_CHECKING:  # pragma: no cover - torch loads when a Detector is built, not for --help
    import torch

DETECTORS = ("mtcnn", "auto", "none")
#: Between keyframes, a face is searched for in its predicted box widened by this fraction of
#: its size on each side.
WINDOW = 0.5
#: ...and a face found there continues the keyframe face whose predicted box it overlaps at
#: least this much
MIN_LINK_IOU = 0.3


@dataclass
class Faces:
    """Detections of one frame, in full-resolution pixels."""

    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (K,) float32; NaN where no detector ran
    landmarks: np.ndarray  # (K, 5, 2) float32; NaN where no detector ran
    #: detected (full detection) | tracked (followed from a keyframe) | padded | whole_image
    source: str = "detected"
    track_ids: np.ndarray | None = None  # (K,) int32 in videos (track.py); None: none
    shot: int | None = None  # videos: the frame's shot (cuts before it, track.py)
    error: str | None = None  # why detection failed on this frame (then there are no faces)
    #: between keyframes: (K,) int32, the index of the keyframe face each face continues;
    #: None on keyframes (full detection)
    links: np.ndarray | None = None
    #: videos: the chunk's state after this frame: (N, 2, 4) float64, for each face of the
    #: chunk's keyframe its last two boxes seen so far (NaN: not yet)
    followed: np.ndarray | None = None

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

    With a ``pool`` (cage_cli.annotation.running.workers: threads with one torch thread each),
    frames on the CPU are detected in parallel, one per thread: MTCNN's many small operators scale
    poorly over intra-op threads, and whole frames in parallel are faster (measured in
    docs/performance.md).
    """

    def __init__(self, options: DetectOptions, device: torch.device | str = "cpu",
                 pool: Executor | None = None):
        import torch

        from .mtcnn import MTCNN

        self.options = options
        self.device = torch.device(device)
        self.mtcnn = MTCNN(self.device)
        self._pool = pool if self.device.type == "cpu" else None

    def __call__(self, images: list[np.ndarray], is_image: list[bool] | None = None) -> list[Faces]:
        """Faces of each frame; ``is_image`` marks photos (--detector auto retries those)."""
        return self.submit(images, is_image).get()

    def submit(self, images: list[np.ndarray], is_image: list[bool] | None = None,
               keyframe: list[bool] | None = None, seed: Faces | None = None) -> Results:
        """Start detecting. ``keyframe`` marks the frames that get full detection (default:
        all); each other frame continues the chunk of the frame before it. ``seed``: the faces
        of the frame before ``images[0]`` when its chunk began in an earlier call. On the CPU
        each chunk goes to the worker pool as one task, so the caller can do other work
        meanwhile; on an accelerator they are detected now."""
        flags = is_image if is_image is not None else [True] * len(images)
        if self.options.detector == "none" or not images:
            return Results([Faces.whole(im.shape[1], im.shape[0]) for im in images])
        keys = keyframe if keyframe is not None else [True] * len(images)
        starts = [i for i, k in enumerate(keys) if k or i == 0] + [len(images)]
        chunks = [(images[a:b], flags[a:b], keys[a], None if keys[a] else seed)
                  for a, b in zip(starts, starts[1:], strict=False)]
        if self.device.type == "cpu":
            return Results.map(self._pool, self._chunk, *zip(*chunks, strict=True), flat=True)
        firsts = [a for a in starts[:-1] if keys[a]]
        detected: dict[int, Faces] = {}
        for kind in {flags[a] for a in firsts}:  # photos and video frames scale differently
            idx = [a for a in firsts if flags[a] == kind]
            detected.update(zip(idx, self.detect([images[a] for a in idx], kind), strict=True))
        out: list[Faces] = []
        for a, (ims, fl, key, before) in zip(starts[:-1], chunks, strict=True):
            first = self._auto(ims[0], fl[0], detected[a]) if key else None
            out += self._chunk(ims, fl, key, before, first)
        return Results(out)

    def _chunk(self, images: list[np.ndarray], is_image: list[bool], keyframe: bool,
               before: Faces | None, first: Faces | None = None) -> list[Faces]:
        """Faces of consecutive frames of one chunk: the first detected in full if it is the
        keyframe (or given as ``first``), the others followed on from ``before``."""
        out: list[Faces] = []
        followed = before.followed if before is not None else None
        for i, image in enumerate(images):
            if i == 0 and keyframe:
                faces = first if first is not None else self._one(image, is_image[0])
                faces.followed = np.stack([faces.boxes.astype(np.float64),
                                           np.full((len(faces), 4), np.nan)], axis=1)
            else:
                faces = self.relocate(image, followed)
            out.append(faces)
            followed = faces.followed
        return out

    def relocate(self, image: np.ndarray, followed: np.ndarray | None) -> Faces:
        """The chunk's keyframe faces found again in ``image``: MTCNN in a window around each
        face's predicted box (its last box, moved as it moved between its last two). Each
        face found is linked to the keyframe face whose predicted box it overlaps most; faces
        linked to none are left for the next keyframe."""
        if followed is None or not len(followed):
            return Faces.empty()
        last, before = followed[:, 0], followed[:, 1]
        boxes = np.where(np.isnan(before), last, 2 * last - before)
        h, w = image.shape[:2]
        (small,), sx, sy, min_face = self._scaled([image])
        size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None]
        windows = np.hstack([boxes[:, :2] - WINDOW * size, boxes[:, 2:] + WINDOW * size])
        found, marks = self.mtcnn.near(small, windows * [sx, sy, sx, sy], min_face,
                                       float(size.max()) * max(sx, sy))
        found = found / np.array([sx, sy] * 2 + [1], np.float32)
        faces = self._filter(found[:, :4], found[:, 4], marks / np.array([sx, sy], np.float32),
                             w, h)
        links = np.full(len(faces), -1, np.int32)
        overlap = box_iou(faces.boxes, boxes)
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            i, j = divmod(int(flat), overlap.shape[1])
            if overlap[i, j] < MIN_LINK_IOU:
                break
            if links[i] < 0 and j not in links:
                links[i] = j
        keep = links >= 0
        followed = followed.copy()
        followed[links[keep], 1] = last[links[keep]]
        followed[links[keep], 0] = faces.boxes[keep]
        return Faces(faces.boxes[keep], faces.scores[keep], faces.landmarks[keep], "tracked",
                     links=links[keep], followed=followed)

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

    def _scaled(self, images: list[np.ndarray], is_image: bool = False
                ) -> tuple[list[np.ndarray], float, float, int]:
        """Frames of one size as detection sees them (downscaled, ``scale``), the scale in x
        and y, and the smallest face in detection pixels."""
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
        return images, scale_x, scale_y, max(12, int(o.min_face * min(scale_x, scale_y)))

    def _detect_same_size(self, images: list[np.ndarray], is_image: bool = False) -> list[Faces]:
        h, w = images[0].shape[:2]
        images, scale_x, scale_y, min_face = self._scaled(images, is_image)
        result = []
        for b, lm in self.mtcnn(np.stack(images), min_face):
            b = b / np.array([scale_x, scale_y] * 2 + [1], np.float32)
            lm = lm / np.array([scale_x, scale_y], np.float32)
            result.append(self._filter(b[:, :4], b[:, 4], lm, w, h))
        return result

    def _filter(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
                width: int, height: int, links: np.ndarray | None = None) -> Faces:
        """The faces kept: threshold, smallest face, ``max_faces`` largest; ``links`` (one
        per box) are kept with their faces."""
        o = self.options
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (scores >= o.threshold) & (side >= o.min_face)
        links = links[keep] if links is not None else None
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        if o.max_faces is not None and len(boxes) > o.max_faces:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            top = np.sort(np.argsort(-area, kind="stable")[: o.max_faces])
            boxes, scores, landmarks = boxes[top], scores[top], landmarks[top]
            links = links[top] if links is not None else None
        return Faces(boxes, scores, landmarks, links=links)


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
