"""Keyframes in video time and cuts (issue 33), and tracked rows told apart (issue 32): a video
of hard cuts at irregular frames, built from the shared clips (tests/cut_video.py), annotated
at every frame and at --fps 5, 2 and 1; continuous footage has no cut; --ray segments give the
rows of a whole run."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import cut_video
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import CLIP, INTERVIEW, MEDIA, cage, read
from PIL import Image
from test_runs import assert_same_rows

from cage_cli.annotation.detection import shots
from cage_cli.annotation.io.decode import Sampling, frames
from cage_cli.annotation.io.inputs import MediaFile
from cage_cli.annotation.io.read import read_annotations
from cage_cli.annotation.running.cluster import _joined
from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions
from cage_cli.models import create_model
from cage_cli.schema import SCHEMA

#: frames per shot: cuts at 13, 21, 38, 49, 71, 80 (none a multiple of 5), 3.8 s at 25 fps
SHOTS = [13, 8, 17, 11, 22, 9, 14]


@pytest.fixture(scope="session")
def cuts(tmp_path_factory) -> tuple[Path, list[int]]:
    """The cut video (596x336, short_clip's size) and the first frame of each shot."""
    path = tmp_path_factory.mktemp("cuts") / "cuts.mp4"
    return path, cut_video.build(path, MEDIA, SHOTS, (596, 336))


@pytest.fixture(scope="module")
def model():
    return create_model("faceapi-expression")


def annotate(path: Path, model, positions=None, **options) -> pa.Table:
    pipeline = Pipeline(AnnotateOptions(**options), RunOptions(), model=model)
    file = MediaFile(str(path), "video")
    if positions is None:
        results = list(pipeline.run([file]))
    else:
        results = list(_joined(pipeline, file, tuple(list(pipeline.run([file], p))
                                                     for p in positions)))
    return pa.Table.from_batches([r.rows for r in results if r.rows is not None], SCHEMA)


@pytest.mark.parametrize("fps", [None, 5.0, 2.0, 1.0])
def test_default_finds_what_full_detection_finds_and_no_track_spans_a_cut(cuts, model,
                                                                           fps) -> None:
    """The default (--detect-every 5) finds at least 0.98 of the faces that --detect-every 1
    finds, at every frame (keyframes forced at the cuts) and at --fps 5, 2, 1 (every sampled
    frame a keyframe: it was 0.42 at --fps 2 with keyframes every 5th sampled frame). Each
    track lies in one shot, and the shot column counts the cuts exactly."""
    path, starts = cuts
    sampling = Sampling(fps=fps)
    ref = annotate(path, model, sampling=sampling, detect_every=1)
    got = annotate(path, model, sampling=sampling, keep_empty=True)
    faces = got.filter(pa.compute.is_valid(got["face_index"]))
    assert ref.num_rows >= (90 if fps is None else 3 * fps)
    assert cut_video.found(ref, faces)[1] >= 0.98 * ref.num_rows
    rows = got.to_pylist()
    true_shot = [bisect.bisect_right(starts, r["frame_index"]) - 1 for r in rows]
    # A cut between two sampled frames is found (and nothing else): the shot goes up there.
    # (Sparse sampling can skip a shot: from a shot of one clip to the next shot of the same
    # clip is no cut in what the sampled frames show, and may or may not count as one.)
    change = [a != b for a, b in zip(true_shot, true_shot[1:], strict=False)]
    other = [a % 2 != b % 2 for a, b in zip(true_shot, true_shot[1:], strict=False)]
    shot = [r["shot"] for r in rows]
    steps = [b - a for a, b in zip(shot, shot[1:], strict=False)]
    assert shot[0] == 0 and set(steps) <= {0, 1}
    assert all(s == 1 for s, o in zip(steps, other, strict=True) if o)
    assert all(s == 0 for s, c in zip(steps, change, strict=True) if not c)
    assert len(set(shot)) >= 2
    for tid in {r["track_id"] for r in rows} - {None}:
        assert len({s for s, r in zip(shot, rows, strict=True) if r["track_id"] == tid}) == 1
        assert len({s % 2 for s, r in zip(true_shot, rows, strict=True)
                    if r["track_id"] == tid}) == 1
    sources = {r["face_source"] for r in rows} - {None}
    if fps is None:  # followed rows are told apart; the first frame of each shot is detected
        assert sources == {"detected", "tracked"}
        first = {r["shot"]: r for r in reversed(rows)}
        assert all(r["face_source"] in ("detected", None) for r in first.values())
    else:  # 25 fps: --fps 5 and sparser sample at most every 5th frame, all keyframes
        assert sources == {"detected"}
        assert got.select(["frame_index", "track_id", "x1", "y2"]).filter(
            pa.compute.is_valid(got["face_index"])) == ref.select(
            ["frame_index", "track_id", "x1", "y2"])


@pytest.mark.parametrize("video", [INTERVIEW, CLIP])
def test_continuous_footage_has_no_cut(video: Path) -> None:
    """No false cut in the shared clips, at every frame and at --fps 10 to 1 (both move:
    a crowd walking towards the camera, a speaker turning her head)."""
    for fps in (None, 10.0, 5.0, 2.0, 1.0):
        got = list(frames(MediaFile(str(video), "video"), Sampling(fps=fps)))
        assert len(got) > 3
        assert not any(f.cut for f in got), (fps, [f.index for f in got if f.cut])
        assert [f.previous for f in got] == [None, *[f.index for f in got[:-1]]]


def test_a_cut_within_one_scene_is_found() -> None:
    """A cut to another framing of the same scene (wide shot to a part of it, one frame
    later) keeps the colours alike but changes the picture; the frame after it within a
    shot does not."""
    got = list(frames(MediaFile(str(INTERVIEW), "video"), Sampling(max_frames=3)))
    def thumb(image: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        im = Image.fromarray(image)
        return shots.thumbnail(np.asarray((im.crop(box) if box else im).resize((640, 360))))
    wide = [thumb(f.image) for f in got]
    part = thumb(got[1].image, (150, 200, 1250, 819))
    assert shots.colour_change(wide[0], part) < shots.COLOUR_CUT  # alike in colour...
    assert shots.is_cut(wide[0], part, 0.04)  # ...but a cut
    assert not shots.is_cut(wide[0], wide[1], 0.04)
    assert not shots.is_cut(wide[1], wide[2], 0.04)


@pytest.mark.parametrize(("options", "positions"), [
    # every frame a block: segments begin at cuts (13, 21) and inside a shot (30)
    ({"detect_every": 1, "sampling": Sampling(max_frames=30)},
     [(0, 13), (13, 21), (21, 25), (25, None)]),
    # --fps 10: segment ends not at blocks of 5 video frames move on to the next one
    ({"sampling": Sampling(fps=10.0)}, [(0, 4), (4, 9), (9, 20), (20, 31), (31, None)]),
])
def test_segments_give_the_rows_of_a_whole_run(cuts, model, options, positions) -> None:
    """A --ray run detects a long video in segments, in parallel, and tracks them in order:
    the cut test at a segment's first frame compares it with the frame before (decoded for
    that), so shots, keyframes, tracks and rows equal a local run's."""
    path, _ = cuts
    whole = annotate(path, model, **options)
    assert max(whole["shot"].to_pylist()) >= 2
    assert_same_rows(annotate(path, model, positions, **options), whole)


def test_no_cuts_option_and_schema(cuts, tmp_path: Path) -> None:
    """--no-cuts: one shot, tracks may run on across a cut (as before); recorded in the
    run's options. Photos have no shot."""
    path, _ = cuts
    out = tmp_path / "a.parquet"
    r = cage("annotate", path, "-o", out, "--no-cuts", "--max-frames", "25", "-q")
    assert r.exit_code == 0, r.stderr
    t = read(out)
    assert set(t["shot"].to_pylist()) == {0}
    assert t.schema.metadata[b"cage.schema_version"] == b"3"
    assert json.loads(t.schema.metadata[b"cage.run"])["options"]["cuts"] is False
    # An output of version 2 (no shot, person_id, embedding) still reads, also as CSV (it
    # failed: "Column 'shot' in include_columns does not exist in CSV file"); a CSV of
    # something else does not.
    old = tmp_path / "v2.csv"
    pacsv.write_csv(t.drop_columns(["shot", "person_id", "embedding"]), old)
    v2 = read_annotations(old)
    assert all(v2[c].null_count == t.num_rows for c in ("shot", "person_id", "embedding"))
    r = cage("summary", old)
    assert r.exit_code == 0, r.stderr
    pacsv.write_csv(pa.table({"a": [1]}), tmp_path / "junk.csv")
    r = cage("summary", tmp_path / "junk.csv")
    assert r.exit_code != 0 and "not a cage annotation file (no column source)" in r.stderr
    out = tmp_path / "p.parquet"
    assert cage("annotate", MEDIA / "single_face.jpg", "-o", out, "-q").exit_code == 0
    assert read(out)["shot"].to_pylist() == [None]

