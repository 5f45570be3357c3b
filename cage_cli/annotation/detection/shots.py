"""Cuts (shot changes) between consecutive sampled frames of a video, from small thumbnails.

A cut is a change of the whole picture from one sampled frame to the next. Two tests, either
one makes a cut:

* the colour histogram (4 levels per channel, 64 bins) of the thumbnails changes by at least
  ``COLOUR_CUT`` (half the L1 distance of the two histograms: the share of pixels whose colour
  would have to change); this catches cuts to other places, at any sampling rate;
* between frames at most ``PICTURE_GAP`` seconds apart, the grey thumbnails differ by at least
  ``PICTURE_CUT`` (mean absolute difference, 0-255); this catches cuts within one scene (another
  camera, a zoom) whose colours stay alike. Frames further apart are not compared this way: in
  continuous footage the picture itself changes that much within a second.

Thresholds are from benchmarks/keyframes.py's measurements (docs/performance.md, "Keyframes in
video time and cuts"): in continuous footage (interview.mp4, short_clip.mp4 and the shots of
the cut video, every frame to ``--fps 1``) the colour change stays below 0.19 and, within
0.1 s, the grey difference below 30 (41 at 0.2 s, 55 at 1 s: moving footage); at the cut
video's hard cuts the colour change is at least 0.40 and the grey difference at least 56, and
at cuts between two framings of one scene the grey difference at least 53.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: thumbnail size (width, height) the tests compare
SIZE = (64, 36)
COLOUR_CUT = 0.3
PICTURE_CUT = 40.0
PICTURE_GAP = 0.1  # seconds: sampling at 10 fps or more


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A (36, 64, 3) float32 thumbnail of an (H, W, 3) uint8 frame: every s-th pixel (a view,
    no copy of the frame), then averaged in boxes. About 0.3 ms for a 1080p frame."""
    w, h = SIZE
    step = max(1, min(image.shape[0] // (2 * h), image.shape[1] // (2 * w)))
    small = Image.fromarray(np.ascontiguousarray(image[::step, ::step]))
    return np.asarray(small.resize(SIZE, Image.Resampling.BOX), np.float32)


def colour_change(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of the thumbnails' colour histograms, 0 (same) to 1."""
    return float(np.abs(_histogram(a) - _histogram(b)).sum() / 2)


def picture_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the grey thumbnails, 0-255."""
    return float(np.abs(a.mean(axis=2) - b.mean(axis=2)).mean())


def is_cut(a: np.ndarray, b: np.ndarray, seconds_apart: float) -> bool:
    """Whether thumbnail ``b`` (a frame ``seconds_apart`` after ``a``) begins a new shot."""
    if colour_change(a, b) >= COLOUR_CUT:
        return True
    return seconds_apart <= PICTURE_GAP + 1e-6 and picture_change(a, b) >= PICTURE_CUT


def _histogram(thumb: np.ndarray) -> np.ndarray:
    q = np.minimum(thumb, 255).astype(np.int64) // 64  # 4 levels per channel
    bins = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel()
    return np.bincount(bins, minlength=64) / bins.size
