"""Faces in videos as tracks: the tracker on synthetic boxes, then real faces in composed videos
and the shared clip (keyframe detection, track ids, --smooth, --detect-every 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, MEDIA, SINGLE, cage, read
from PIL import Image

from cage_cli.annotation.detection import track
from cage_cli.annotation.detection.detect import DetectOptions, Detector
from cage_cli.annotation.io.decode import frames
from cage_cli.annotation.io.inputs import discover
from cage_cli.annotation.running.workers import Workers

NO_MARKS = np.full((5, 2), np.nan)


def step(state: track.TrackState, t: float, boxes: list, links: list | None = None) -> list:
    b = np.array(boxes, np.float64).reshape(-1, 4)
    marks = np.broadcast_to(NO_MARKS, (len(b), 5, 2))
    _, ids = track.update(state, t, b, marks, None if links is None else np.array(links))
    return ids.tolist()


# --- the tracker alone ------------------------------------------------------------------


def test_birth_order_and_continuation() -> None:
    s = track.TrackState()
    assert step(s, 0.0, [[100, 0, 140, 40], [0, 0, 40, 40]]) == [0, 1]  # in order of the list
    assert step(s, 0.1, [[2, 0, 42, 40], [103, 1, 143, 41]]) == [1, 0]  # matched by overlap
    assert step(s, 0.2, [[300, 0, 340, 40], [5, 0, 45, 40]]) == [2, 1]  # a newcomer: id 2


def test_death_after_gap_and_missed_detections_within_it() -> None:
    s = track.TrackState(gap=1.0)
    assert step(s, 0.0, [[0, 0, 40, 40]]) == [0]
    assert step(s, 0.5, []) == []  # missed for 0.9 s: shorter than the gap
    assert step(s, 0.9, [[1, 0, 41, 40]]) == [0]
    assert step(s, 2.0, [[1, 0, 41, 40]]) == [1]  # unseen for 1.1 s: a new id
    assert [t.id for t in s.tracks] == [1]  # the dead track is gone


def test_crossing_faces_keep_their_ids() -> None:
    """Two faces at one height move through each other; constant-velocity prediction keeps
    each id on its own face, even in the frames where the boxes overlap most."""
    s = track.TrackState()
    for k in range(12):
        a = [10 + 15 * k, 0, 60 + 15 * k, 50]  # left to right
        b = [180 - 15 * k, 5, 230 - 15 * k, 55]  # right to left
        # (listed in turn a, b and b, a: the ids follow the faces, not the list order)
        assert step(s, k / 10, [b, a] if k % 2 else [a, b]) == ([1, 0] if k % 2 else [0, 1])
    assert s.next_id == 2


def test_links_carry_ids_and_keyframe_faces_match_by_motion() -> None:
    s = track.TrackState(gap=1.0)
    assert step(s, 0.0, [[0, 0, 40, 40], [100, 0, 140, 40]]) == [0, 1]  # a keyframe
    # Followed faces (links: indices of the keyframe's faces) inherit, whatever the boxes.
    assert step(s, 0.1, [[100, 0, 140, 40], [10, 0, 50, 40]], links=[1, 0]) == [1, 0]
    assert step(s, 0.2, [[20, 0, 60, 40]], links=[0]) == [0]  # face 1 not found: no row
    # The next keyframe: the face moving right is predicted at 30 px, the other one still
    # where it was last seen.
    assert step(s, 0.3, [[101, 0, 141, 40], [31, 0, 71, 40]]) == [1, 0]
    # A followed face whose track has been unseen for longer than the gap starts a new id,
    # and keeps it for the rest of its chunk.
    assert step(s, 1.5, [[30, 0, 70, 40]], links=[1]) == [2]
    assert step(s, 1.6, [[32, 0, 72, 40]], links=[1]) == [2]


def test_smooth_is_a_causal_moving_average() -> None:
    s = track.TrackState()
    tau, values = 0.5, [np.array([[1.0, 0.0, np.nan]]), np.array([[0.0, 1.0, np.nan]])]
    step(s, 0.0, [[0, 0, 40, 40]])
    first = track.smooth(s, 0.0, np.array([0]), values[0], tau)
    assert first.tolist()[0][:2] == [1.0, 0.0]  # the first value is kept as it is
    step(s, 0.2, [[0, 0, 40, 40]])
    second = track.smooth(s, 0.2, np.array([0]), values[1], tau)
    keep = math.exp(-0.2 / tau)
    assert second[0, :2] == pytest.approx([keep, 1 - keep])
    assert np.isnan(second[0, 2])  # a class the model lacks stays NaN


# --- composed videos with real faces -------------------------------------------------------


def _face(path: Path, size: int) -> np.ndarray:
    """The face of a shared photo, cut with a margin and resized to size x size."""
    image = np.asarray(Image.open(path).convert("RGB"))
    faces = Detector(DetectOptions())([image])[0]
    x1, y1, x2, y2 = faces.boxes[np.argmax(faces.scores)]
    side = max(x2 - x1, y2 - y1) * 1.6
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    box = tuple(int(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(Image.fromarray(image).crop(box).resize((size, size)))


def _write(path: Path, frames_rgb: list[np.ndarray], fps: int = 10) -> Path:
    h, w = frames_rgb[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames_rgb:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    return _face(SINGLE, 100), _face(MEDIA / "portrait_kate_siegel.jpg", 100)


@pytest.fixture(scope="module")
def crossing(faces, tmp_path_factory) -> Path:
    """Two faces on a grey canvas, 3 s at 10 fps: A from the left at the top, B from the right
    lower down; they pass in the middle with their boxes partly overlapping (B in front)."""
    a, b = faces
    out = []
    for k in range(30):
        canvas = np.full((260, 480, 3), 128, np.uint8)
        xa, xb = 10 + 12 * k, 370 - 12 * k
        canvas[20:120, xa : xa + 100] = a
        canvas[95:195, xb : xb + 100] = b
        out.append(canvas)
    return _write(tmp_path_factory.mktemp("cross") / "crossing.mp4", out)


@pytest.mark.parametrize("every", ["1", "5"])
def test_two_faces_passing_give_two_tracks_that_never_swap(crossing: Path, tmp_path: Path,
                                                           every: str) -> None:
    out = tmp_path / "x.parquet"
    r = cage("annotate", crossing, "-o", out, "--detect-every", every, "-q")
    assert r.exit_code == 0, r.stderr
    rows = read(out).to_pylist()
    assert sorted({r["track_id"] for r in rows}) == [0, 1]
    for tid in (0, 1):
        mine = sorted((r["frame_index"], (r["x1"] + r["x2"]) / 2, (r["y1"] + r["y2"]) / 2)
                      for r in rows if r["track_id"] == tid)
        assert len(mine) >= 27  # found in (nearly) every one of the 30 frames
        xs, ys = np.array([m[1] for m in mine]), np.array([m[2] for m in mine])
        # One person per id: always on its own row of the canvas, always moving one way.
        assert np.ptp(ys) < 25
        assert np.all(np.diff(xs) > 0) or np.all(np.diff(xs) < 0)
    first = {r["track_id"]: r for r in rows if r["frame_index"] == 0}
    assert first[0]["x1"] < first[1]["x1"]  # id 0: the face seen first (leftmost, listed first)


@pytest.fixture(scope="module")
def away(faces, tmp_path_factory) -> Path:
    """One face, 10 fps: there for frames 0-9, gone for 10-24 (1.5 s), back for 25-34."""
    a, _ = faces
    out = []
    for k in range(35):
        canvas = np.full((200, 260, 3), 128, np.uint8)
        if not 10 <= k < 25:
            canvas[50:150, 80:180] = a
        out.append(canvas)
    return _write(tmp_path_factory.mktemp("away") / "away.mp4", out)


def test_face_gone_longer_than_the_gap_comes_back_under_a_new_id(away: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    assert cage("annotate", away, "-o", out, "-q").exit_code == 0
    rows = read(out).to_pylist()
    by_frame = {r["frame_index"]: r["track_id"] for r in rows}
    assert len(by_frame) == len(rows)  # one face per frame
    assert not any(10 <= f < 25 for f in by_frame)  # no rows while it is gone
    assert {by_frame.get(f) for f in range(10)} == {0}
    assert {by_frame.get(f) for f in range(25, 35)} == {1}
    # A gap longer than the absence keeps the id.
    out2 = tmp_path / "b.parquet"
    assert cage("annotate", away, "-o", out2, "--track-gap", "2", "-q").exit_code == 0
    assert {r["track_id"] for r in read(out2).to_pylist()} == {0}


# --- the shared clip --------------------------------------------------------------------


def test_detect_every_1_is_per_frame_detection(tmp_path: Path) -> None:
    """--detect-every 1 gives exactly what a per-frame Detector call gives, plus track ids; and
    with keyframes every 5 frames, the keyframes' rows are still exactly that."""
    clip_frames = list(frames(discover([str(CLIP)]).files[0]))[:12]
    # In a worker thread with one torch thread, as the pipeline runs it (more intra-op threads
    # can round differently).
    want = Detector(DetectOptions(), pool=Workers(1))([f.image for f in clip_frames])
    for every in ("1", "5"):
        out = tmp_path / f"k{every}.parquet"
        r = cage("annotate", CLIP, "-o", out, "--max-frames", "12", "--detect-every", every,
                 "-q")
        assert r.exit_code == 0, r.stderr
        rows = read(out).to_pylist()
        assert all(r["track_id"] == 0 for r in rows)  # one person throughout
        for f, faces in zip(clip_frames, want, strict=True):
            got = [r for r in rows if r["frame_index"] == f.index]
            if every == "5" and f.position % 5:
                continue
            assert len(got) == len(faces)
            for r, box, score, marks in zip(got, faces.boxes, faces.scores, faces.landmarks,
                                            strict=True):
                assert [r["x1"], r["y1"], r["x2"], r["y2"]] == box.tolist()
                assert r["det_score"] == score
                assert r["left_eye_x"] == marks[0, 0] and r["mouth_right_y"] == marks[4, 1]
        if every == "1":
            assert len(rows) == sum(len(d) for d in want)


def test_smooth_averages_each_track_and_is_recorded(tmp_path: Path) -> None:
    raw, smoothed = tmp_path / "raw.parquet", tmp_path / "smooth.parquet"
    for out, extra in ((raw, []), (smoothed, ["--smooth", "0.5"])):
        r = cage("annotate", CLIP, "-o", out, "--max-frames", "20", "-q", *extra)
        assert r.exit_code == 0, r.stderr
    a, b = read(raw).to_pylist(), read(smoothed).to_pylist()
    assert [(r["frame_index"], r["track_id"], r["x1"]) for r in a] == \
        [(r["frame_index"], r["track_id"], r["x1"]) for r in b]
    cols = [c for c in a[0] if c.startswith("p_")] + ["valence", "arousal"]
    expect, last = None, None
    for ra, rb in zip(a, b, strict=True):
        x = np.array([np.nan if ra[c] is None else ra[c] for c in cols])
        if expect is None:
            expect = x
        else:
            keep = math.exp(-(ra["timestamp_s"] - last) / 0.5)
            expect = np.where(np.isnan(expect), x, keep * expect + (1 - keep) * x)
        last = ra["timestamp_s"]
        got = np.array([np.nan if rb[c] is None else rb[c] for c in cols])
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
        probs = {c[2:]: rb[c] for c in cols[:-2] if rb[c] is not None}
        assert rb["label"] == max(probs, key=probs.get)  # the label follows the smoothing
    meta = json.loads(pq.read_schema(smoothed).metadata[b"cage.run"])
    assert meta["options"]["smooth"] == 0.5 and meta["options"]["detect_every"] == 5
    # Resuming with other tracking options is refused: they change the rows.
    r = cage("annotate", CLIP, "-o", f"{tmp_path}/dir/", "--max-frames", "3", "-q")
    assert r.exit_code == 0
    r = cage("annotate", CLIP, "-o", f"{tmp_path}/dir/", "--max-frames", "3", "--resume",
             "--detect-every", "2", "-q")
    assert r.exit_code == 2 and "detect_every 5 -> 2" in r.stderr


def test_tracking_options_are_checked() -> None:
    for args, message in ((["--detect-every", "0"], "--detect-every must be at least 1"),
                          (["--smooth", "0"], "--smooth must be positive"),
                          (["--track-gap", "-1"], "--track-gap must not be negative")):
        r = cage("annotate", CLIP, "-o", "-", *args)
        assert r.exit_code == 2 and message in r.stderr


def test_rows_do_not_depend_on_how_fast_frames_are_decoded(monkeypatch) -> None:
    """A decoder slower than detection makes the pipeline give out a group's rows before the
    next frames come, so a chunk (--detect-every 5) goes on in a later group: its faces must
    still be followed from the frame before (they were lost: 110 of short_clip's 114 rows
    under load)."""
    import time

    import pyarrow as pa

    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.running import pipeline

    files = discover([str(CLIP)]).files
    p = pipeline.Pipeline(pipeline.AnnotateOptions(sampling=Sampling(max_frames=12)),
                          pipeline.RunOptions(frames_per_batch=2))

    def rows() -> dict:
        table = pa.Table.from_batches([r.rows for r in p.run(files) if r.rows is not None])
        return table.select(["frame_index", "track_id", "x1", "y1", "x2", "y2"]).to_pydict()

    fast = rows()
    decode = pipeline.frames

    def slow(*args, **kwargs):
        for frame in decode(*args, **kwargs):
            time.sleep(0.3)  # the pipeline times out (0.05 s) and flushes between frames
            yield frame

    monkeypatch.setattr(pipeline, "frames", slow)
    assert rows() == fast
    # Every frame but 6, which has no face even with full detection on every frame.
    assert fast["frame_index"] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert set(fast["track_id"]) == {0}
