"""Stage 3: find faces. MTCNN (facenet-pytorch's networks, run by cage_cli.mtcnn).

Detection can run on a downscaled copy of each frame (``det_max_side``); boxes and landmarks
are mapped back to full-resolution pixels, and crops are always cut from the full frame.

Videos are detected in *chunks* (--detect-every K): full MTCNN on a keyframe (every K-th
sampled frame) and the K-1 sampled frames after it. Each face found on the keyframe is
searched for again, frame by frame, by MTCNN in a window around where it is predicted to be
(``MTCNN.near``: the boxes are those full detection gives). A face not found there has no row
in that frame (no guessed boxes); it is searched for again in the chunk's next frames, from
where it was last seen. New faces appear at the next keyframe. Each face found between
keyframes carries a *link*: the index of the keyframe face it continues (cage_cli.track gives
it that face's id). A chunk depends only on its own frames, so chunks are detected in
parallel, and rows do not depend on how frames are grouped.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cage_cli.mtcnn import MTCNN
from cage_cli.track import box_iou
from cage_cli.workers import Results

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
    source: str = "detected"  # detected | padded | whole_image
    track_ids: np.ndarray | None = None  # (K,) int32 in videos (cage_cli.track); None: none
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
    #: ...but never smaller than this fraction of full resolution, so that faces 40 px tall
    #: stay 16 px tall where MTCNN looks (4K video; docs/performance.md)
    min_scale: float = 0.4
    #: --detector auto: borders tried in turn (each side, fraction of the image size), chosen
    #: by benchmarks/crop_recall.py (docs/performance.md)
    pads: tuple[float, ...] = (0.1, 0.35)
    #: --detector auto: images whose longer side is at most this fall back to the whole image
    whole_max_side: int = 160


class Detector:
    """MTCNN with our thresholds; call with a list of (H, W, 3) uint8 frames.

    With a ``pool`` (cage_cli.workers: threads with one torch thread each), frames
    on the CPU are detected in parallel, one per thread: MTCNN's many small operators scale
    poorly over intra-op threads, and whole frames in parallel are faster (measured in
    docs/performance.md).
    """

    def __init__(self, options: DetectOptions, device: torch.device | str = "cpu",
                 pool: Executor | None = None):
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
        detected = dict(zip(firsts, self.detect([images[i] for i in firsts]), strict=True))
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
        return Faces(faces.boxes[keep], faces.scores[keep], faces.landmarks[keep],
                     links=links[keep], followed=followed)

    def _one(self, image: np.ndarray, is_image: bool) -> Faces:
        return self._auto(image, is_image, self._detect_same_size([image])[0])

    def _auto(self, image: np.ndarray, is_image: bool, faces: Faces) -> Faces:
        """--detector auto: a photo without a face gets another try (padded, whole)."""
        if not len(faces) and is_image and self.options.detector == "auto":
            return self._retry(image)
        return faces

    def detect(self, images: list[np.ndarray]) -> list[Faces]:
        """MTCNN on each frame, in this thread. On a GPU, one batched call per group of
        equal-size frames.

        On the CPU every frame gets its own call: a batched call is no faster there
        (measured), and it gives slightly different boxes (float rounding) depending on
        which frames share the batch, so single calls keep rows identical however a run is
        grouped, interrupted or resumed.
        """
        if self.device.type == "cpu":
            return [self._detect_same_size([im])[0] for im in images]
        out: list[Faces | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for idx in groups.values():
            for i, faces in zip(idx, self._detect_same_size([images[i] for i in idx]),
                                strict=True):
                out[i] = faces
        return out  # type: ignore[return-value]

    def _scaled(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], float, float, int]:
        """Frames of one size as detection sees them (downscaled to ``max_side``), the
        scale in x and y, and the smallest face in detection pixels."""
        o = self.options
        h, w = images[0].shape[:2]
        scale = 1.0
        if o.max_side and max(h, w) > o.max_side:
            scale = min(1.0, max(o.max_side / max(h, w), o.min_scale))
        if scale != 1.0:  # Pillow per frame: no float copy of a huge frame or batch
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            images = [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR,
                                                            reducing_gap=3.0)) for im in images]
            scale_x, scale_y = size[0] / w, size[1] / h
        else:
            scale_x = scale_y = 1.0
        # MTCNN's pyramid starts at min_face (in detection pixels): smaller is slower.
        return images, scale_x, scale_y, max(12, int(o.min_face * min(scale_x, scale_y)))

    def _detect_same_size(self, images: list[np.ndarray]) -> list[Faces]:
        h, w = images[0].shape[:2]
        images, scale_x, scale_y, min_face = self._scaled(images)
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

