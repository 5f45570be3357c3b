"""A video of hard cuts built from the shared clips (tests and benchmarks/tracking.py): shots
of short_clip.mp4 (one face) alternating with shots of a face region of interview.mp4 (a
crowd walking towards the camera, 2-4 faces), each resized to one frame size. Each source goes
on where its last shot left it (back and forth through the clip when it runs out), so faces
move within a shot and jump at every cut."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from cage_cli.annotation.detection.track import box_iou
from cage_cli.annotation.io.decode import frames
from cage_cli.annotation.io.inputs import MediaFile

#: the part of interview.mp4's 1920x1080 frames (x1, y1, x2, y2) where its largest faces walk
INTERVIEW_REGION = (150, 500, 790, 860)


def _source(path: Path, size: tuple[int, int], region: tuple[int, ...] | None) -> list:
    out = []
    for f in frames(MediaFile(str(path), "video")):
        im = Image.fromarray(f.image)
        out.append(np.asarray((im.crop(region) if region else im).resize(
            size, Image.Resampling.BILINEAR)))
    return out


def panned(photo: Path, size: tuple[int, int], n: int = 40) -> list[np.ndarray]:
    """``n`` frames of a photo (scaled to the frame's height) drifting across a grey frame: a
    still person who moves a little in the picture."""
    im = Image.open(photo).convert("RGB")
    im = im.resize((im.width * size[1] // im.height, size[1]), Image.Resampling.BILINEAR)
    out = []
    for i in range(n):
        frame = Image.new("RGB", size, (128, 128, 128))
        frame.paste(im, ((size[0] - im.width) * i // max(n - 1, 1), 0))
        out.append(np.asarray(frame))
    return out


def build(path: Path, media: Path, shots: list[int], size: tuple[int, int] = (596, 336),
          fps: int = 25, sources: list[list[np.ndarray]] | None = None) -> list[int]:
    """Write the video (H.264, ``fps``) of ``shots`` (frames per shot) to ``path``; returns the
    index of each shot's first frame. ``sources``: two lists of frames to alternate (default:
    short_clip.mp4 and interview.mp4's face region)."""
    sources = sources or [_source(media / "short_clip.mp4", size, None),
                          _source(media / "interview.mp4", size, INTERVIEW_REGION)]
    at = [0, 0]
    starts, n = [], 0
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        # Lossless: lossy x264 gives other pixels from run to run (its threads), and faces
        # near the detection threshold then come and go.
        s.options = {"qp": "0"}
        for k, length in enumerate(shots):
            starts.append(n)
            src = sources[k % 2]
            for _ in range(length):
                i = at[k % 2] % (2 * len(src) - 2)  # back and forth through the clip
                image = src[i if i < len(src) else 2 * len(src) - 2 - i]
                at[k % 2] += 1
                for p in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    c.mux(p)
                n += 1
        for p in s.encode():
            c.mux(p)
    return starts


def faces_by_frame(t) -> dict[int, np.ndarray]:  # noqa: ANN001 - a pyarrow Table of rows
    """Face boxes (K, 4) of an annotation table, per frame index."""
    d = t.select(["frame_index", "face_index", "x1", "y1", "x2", "y2"]).to_pydict()
    out: dict[int, list] = {}
    for i, f in enumerate(d["frame_index"]):
        if d["face_index"][i] is not None:
            out.setdefault(f, []).append([d[c][i] for c in ("x1", "y1", "x2", "y2")])
    return {f: np.array(b) for f, b in out.items()}


def found(ref, got) -> tuple[int, int]:  # noqa: ANN001 - pyarrow Tables of rows
    """(faces of ``ref``, those ``got`` has in the same frame: box IoU > 0.5, greedily)."""
    mine, total, hits = faces_by_frame(got), 0, 0
    for f, rb in faces_by_frame(ref).items():
        total += len(rb)
        if f not in mine:
            continue
        m = box_iou(rb, mine[f])
        used_r: set[int] = set()
        used_g: set[int] = set()
        for flat in np.argsort(-m, axis=None, kind="stable"):
            i, j = divmod(int(flat), m.shape[1])
            if m[i, j] <= 0.5:
                break
            if i not in used_r and j not in used_g:
                used_r.add(i)
                used_g.add(j)
        hits += len(used_r)
    return total, hits
