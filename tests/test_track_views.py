"""Tracks in the downstream commands (issue 18, item 6): `cage summary` per track, `cage plot`
per-track timelines, `cage render` track colours and ids, `cage export --per-track`.

Unit tests build small tables by hand for the aggregation and selection rules. The main tests
use real `cage annotate` output of short_clip.mp4 and interview.mp4; those need the tracker
(track ids filled in, issue 18 items 1-3) and fail with a clear message on outputs whose
track ids are all null. Outputs of a cage without tracking (schema v1, no track_id column)
are made from the same real output by dropping the column.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, INTERVIEW, SINGLE, cage
from PIL import Image

from cage_cli.annotation.io.decode import video_frames_at
from cage_cli.annotation.io.read import read_annotations
from cage_cli.export.prelabel import ExportError, per_track, pick_diverse, read_manifest
from cage_cli.schema import EXPRESSIONS, SCHEMA
from cage_cli.view.plot import _label_runs, _track_series, build_figure
from cage_cli.view.render import LABEL_COLORS, draw_faces, track_color
from cage_cli.view.summary import load_annotations, longest_tracks, summarize, track_stats

MAX_FRAMES = 20


# --- hand-built tables: the aggregation and selection rules --------------------------------

def face(source: str, frame: int, track: int | None, label: str, v: float, a: float,
         media: str = "video", side: float = 40.0, score: float = 0.99,
         p: float = 0.9) -> dict:
    """One face row with the schema's columns; ``label`` gets probability ``p``, the rest
    is spread evenly over the other seven classes."""
    row = dict.fromkeys(SCHEMA.names)
    rest = (1 - p) / (len(EXPRESSIONS) - 1)
    row.update(source=source, media=media, frame_index=frame, frame_width=640,
               frame_height=480, face_index=0, track_id=track, face_source="detected",
               x1=10.0, y1=10.0, x2=10.0 + side, y2=10.0 + side, det_score=score,
               model="m", label=label, valence=v, arousal=a, va_method="head",
               timestamp_s=None if media == "image" else frame / 10)
    row.update({f"p_{e}": (p if e == label else rest) for e in EXPRESSIONS})
    return row


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def test_track_stats_by_hand() -> None:
    rows = [face("v.mp4", f, 0, "happy" if f < 3 else "sad", 0.5, 0.1) for f in range(4)]
    rows += [face("v.mp4", f, 1, "neutral", -0.2, 0.3 + 0.1 * f) for f in (2, 3, 7)]
    stats = track_stats(table(rows))
    assert [t["track_id"] for t in stats] == [0, 1]
    t0, t1 = stats
    assert (t0["frames"], t0["first_s"], t0["last_s"]) == (4, 0.0, 0.3)
    assert (t0["dominant_expression"], t0["dominant_share"]) == ("happy", 0.75)
    assert t0["mean_valence"] == pytest.approx(0.5) and t0["mean_arousal"] == pytest.approx(0.1)
    assert (t1["frames"], t1["first_s"], t1["last_s"]) == (3, 0.2, 0.7)
    assert t1["mean_arousal"] == pytest.approx((0.5 + 0.6 + 1.0) / 3, abs=1e-6)
    # the longest first; ties go to the earlier id; listed in id order
    assert [t["track_id"] for t in longest_tracks(stats, 1)] == [0]
    assert [t["track_id"] for t in longest_tracks(stats, 5)] == [0, 1]

    # summarize: tracks per tracked video, None for photos and videos without ids
    photo = face("p.jpg", 0, None, "happy", 0.1, 0.1, media="image")
    old = [face("old.mp4", f, None, "sad", 0.0, 0.0) for f in range(3)]
    result = summarize(table(rows + [photo] + old))
    by = {s["source"]: s for s in result["sources"]}
    assert [t["track_id"] for t in by["v.mp4"]["tracks"]] == [0, 1]
    assert by["p.jpg"]["tracks"] is None and by["old.mp4"]["tracks"] is None
    assert result["total"]["tracks"] == 2
    assert summarize(table(old))["total"]["tracks"] is None


def test_pick_diverse_by_hand() -> None:
    # 10 frames of one person: happy in frames 0-4, sad in 5-9; frame 3 is the largest face
    track = [face("v.mp4", f, 0, "happy" if f < 5 else "sad", 0, 0,
                  side=80.0 if f == 3 else 60.0) for f in range(10)]
    picks = pick_diverse(track, 2)
    assert picks[0] == 3  # the best: largest face, same score
    assert track[picks[1]]["label"] == "sad"  # the next: the other expression...
    assert picks[1] == 9  # ... and the furthest in time from frame 3
    assert sorted(pick_diverse(track, 20)) == list(range(10))
    # a low detector score outweighs size
    track[3]["det_score"] = 0.5
    assert pick_diverse(track, 1) != [3]

    # per_track: per (source, track); photos pass; input order kept
    rows = track + [face("v.mp4", f, 1, "neutral", 0, 0) for f in range(4)]
    rows.insert(0, face("p.jpg", 0, None, "happy", 0, 0, media="image"))
    kept = per_track(rows, 2)
    assert Counter((r["media"], r["track_id"]) for r in kept) == {
        ("image", None): 1, ("video", 0): 2, ("video", 1): 2}
    assert kept == [r for r in rows if any(r is k for k in kept)]
    with pytest.raises(ExportError, match="no track ids"):
        per_track([face("old.mp4", 0, None, "sad", 0, 0)], 2)


def test_track_series_breaks_at_gaps() -> None:
    rows = table([face("v.mp4", f, 0, "happy" if f < 6 else "sad", f / 10, 0)
                  for f in (0, 1, 2, 5, 6)])
    s = _track_series(rows, 0, step=0.1)
    assert np.isnan(s["t"]).sum() == 1 and np.isnan(s["t"][3])  # missing frames 3 and 4
    assert s["valence"][~np.isnan(s["valence"])].tolist() == pytest.approx([0, .1, .2, .5, .6])
    runs = _label_runs(s["t_raw"], s["label"], 0.1)
    assert [(lb, round(t0, 3), round(w, 3)) for lb, t0, w in runs] == [
        ("happy", 0.0, 0.3), ("happy", 0.5, 0.1), ("sad", 0.6, 0.1)]


# --- real output -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Both shared videos, the first MAX_FRAMES frames, annotated for real (links to the
    shared media), and the same output without the track_id column (as a cage without
    tracking wrote it)."""
    root = tmp_path_factory.mktemp("tracks")
    media = root / "media"
    media.mkdir()
    for p in (CLIP, INTERVIEW, SINGLE):
        (media / p.name).symlink_to(p)
    out = root / "faces.parquet"
    r = cage("annotate", media, "-o", out, "--max-frames", MAX_FRAMES, "-q")
    assert r.exit_code == 0, r.stderr
    v1 = root / "v1.parquet"
    t = pq.read_table(out)
    pq.write_table(t.drop_columns(["track_id"]).replace_schema_metadata(
        {**t.schema.metadata, b"cage.schema_version": b"1"}), v1)
    return {"parquet": out, "v1": v1, "media": media, "root": root}


@pytest.fixture(scope="module")
def tracked(real) -> pa.Table:
    """The real rows; fails unless every video face carries a track id (needs the tracker)."""
    t = read_annotations(real["parquet"])
    faces = [r for r in t.to_pylist() if r["face_index"] is not None]
    video = [r for r in faces if r["media"] == "video"]
    assert video, "no video faces"
    missing = sum(r["track_id"] is None for r in video)
    assert missing == 0, (f"{missing} of {len(video)} video faces have no track_id: "
                          "these tests need the tracker (issue 18, branch tracks)")
    assert all(r["track_id"] is None for r in faces if r["media"] == "image")
    return t


def tracks_of(t: pa.Table) -> dict[tuple[str, int], list[dict]]:
    """(source name, track id) -> the track's face rows in frame order (independent of
    cage_cli's aggregation)."""
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in sorted(t.to_pylist(), key=lambda r: r["frame_index"]):
        if r["track_id"] is not None:
            out[(Path(r["source"]).name, r["track_id"])].append(r)
    return dict(out)


def test_real_track_ids(tracked) -> None:
    tracks = tracks_of(tracked)
    ids = defaultdict(set)
    for name, tid in tracks:
        ids[name].add(tid)
    assert set(ids) == {"short_clip.mp4", "interview.mp4"}
    for name, got in ids.items():
        assert sorted(got) == list(range(len(got))), name  # 0, 1, ... per source
    assert len(ids["interview.mp4"]) >= 3  # a crowd: several people at once
    for rows in tracks.values():  # one face per track and frame
        assert len({r["frame_index"] for r in rows}) == len(rows)


def test_summary_tracks_real(real, tracked) -> None:
    r = cage("summary", real["parquet"], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    want = tracks_of(tracked)
    by = {Path(s["source"]).name: s for s in result["sources"]}
    assert by["single_face.jpg"]["tracks"] is None
    for name in ("short_clip.mp4", "interview.mp4"):
        got = by[name]["tracks"]
        assert [t["track_id"] for t in got] == sorted(tid for n, tid in want if n == name)
        assert sum(t["frames"] for t in got) == by[name]["faces"]
        for t in got:
            rows = want[(name, t["track_id"])]
            labels = Counter(r["label"] for r in rows)
            assert t["frames"] == len(rows)
            assert t["first_s"] == pytest.approx(rows[0]["timestamp_s"], abs=1e-6)
            assert t["last_s"] == pytest.approx(rows[-1]["timestamp_s"], abs=1e-6)
            assert labels[t["dominant_expression"]] == max(labels.values())
            assert t["dominant_share"] == pytest.approx(max(labels.values()) / len(rows),
                                                        abs=1e-6)
            assert t["mean_valence"] == pytest.approx(np.mean([r["valence"] for r in rows]),
                                                      abs=1e-5)
            assert t["mean_arousal"] == pytest.approx(np.mean([r["arousal"] for r in rows]),
                                                      abs=1e-5)
    assert result["total"]["tracks"] == len(want)
    # the table: a tracks section per video, at most --tracks rows each
    r = cage("summary", real["parquet"], "--tracks", "2")
    assert r.exit_code == 0, r.stderr
    n_int = sum(1 for n, _ in want if n == "interview.mp4")
    assert f"tracks in interview.mp4: {n_int} (the 2 longest)" in r.stdout
    assert "not available" not in r.stdout


def test_plot_tracks_real(real, tracked) -> None:
    want = tracks_of(tracked)
    interview = {tid: rows for (n, tid), rows in want.items() if n == "interview.mp4"}
    for n in (2, 5):
        fig = build_figure(tracked, tracks=n)
        v_ax = next(ax for ax in fig.axes if ax.get_title().startswith(
            "interview.mp4: valence per track"))
        lines = [ln for ln in v_ax.get_lines() if ln.get_label().startswith("#")]
        longest = sorted(interview, key=lambda k: (-len(interview[k]), k))[:n]
        assert sorted(int(ln.get_label()[1:].split()[0]) for ln in lines) == sorted(longest)
        for ln in lines:
            tid = int(ln.get_label()[1:].split()[0])
            y = np.asarray(ln.get_ydata(), dtype=float)
            assert y[~np.isnan(y)] == pytest.approx([r["valence"] for r in interview[tid]],
                                                    abs=1e-6)
            assert ln.get_color() == "#{:02x}{:02x}{:02x}".format(*track_color(tid))
        strip = next(ax for ax in fig.axes if ax.get_title() == "interview.mp4: label per track")
        assert [t.get_text() for t in strip.get_yticklabels()] == [f"#{k}" for k in
                                                                   sorted(longest)]
    out = real["root"] / "tracks.png"
    r = cage("plot", real["parquet"], "-o", out, "--tracks", "3")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_render_track_colours_real(real, tracked, tmp_path) -> None:
    rows = [r for r in tracked.to_pylist() if r["source"].endswith("interview.mp4")
            and r["frame_index"] == 5]
    assert len(rows) >= 2
    frame = next(iter(video_frames_at(str(INTERVIEW), [5]))).image
    image = Image.fromarray(frame)
    draw_faces(image, rows)
    drawn = np.asarray(image).astype(int)
    for r in rows:  # the box's left edge (below the tag) is the track's colour
        x = int(round(r["x1"]))
        y = int((r["y1"] + r["y2"]) / 2)
        patch = drawn[y - 1:y + 2, max(0, x - 1):x + 2].reshape(-1, 3)
        assert np.abs(patch - np.array(track_color(r["track_id"]))).sum(axis=1).min() < 30, r

    # the whole clip through the CLI: frame 0's box is drawn in track 0's colour
    out = tmp_path / "clip.mp4"
    r = cage("render", real["parquet"], "--source", real["media"] / "short_clip.mp4", "-o", out)
    assert r.exit_code == 0, r.stderr
    row = next(r for r in tracked.to_pylist() if r["source"].endswith("short_clip.mp4")
               and r["frame_index"] == 0)
    with av.open(str(out)) as c:
        f0 = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    x, y = int(round(row["x1"])), int((row["y1"] + row["y2"]) / 2)
    patch = f0[y - 2:y + 3, max(0, x - 2):x + 3].reshape(-1, 3)
    assert np.abs(patch - np.array(track_color(row["track_id"]))).sum(axis=1).min() < 60


def test_export_per_track_real(real, tracked, tmp_path) -> None:
    n = 2
    ds = tmp_path / "ds"
    r = cage("export", real["parquet"], "-o", ds, "--per-track", n, "-q",
             "--review-csv", tmp_path / "review.csv")
    assert r.exit_code == 0, r.stderr
    _, manifest = read_manifest(ds)
    want = tracks_of(tracked)
    got = Counter((Path(m["source"]).name, m["track_id"]) for m in manifest
                  if m["media"] == "video")
    assert got == {k: min(n, len(rows)) for k, rows in want.items()}
    photos = [m for m in manifest if m["media"] == "image"]
    assert len(photos) == 1 and photos[0]["track_id"] is None  # the photo's one face passes
    ann = tracked.to_pylist()
    for m in manifest:
        a = ann[m["annotation_row"]]
        assert (m["source"], m["frame_index"], m["face_index"], m["track_id"]) == (
            a["source"], a["frame_index"], a["face_index"], a["track_id"])
        assert (ds / m["image"]).is_file()
    # the first pick of each track is its best face: highest score x relative size
    for key, rows in want.items():
        picked = {(m["frame_index"]) for m in manifest
                  if (Path(m["source"]).name, m["track_id"]) == key}
        side = [min(r["x2"] - r["x1"], r["y2"] - r["y1"]) for r in rows]
        q = [r["det_score"] * s / max(side) for r, s in zip(rows, side, strict=True)]
        assert rows[int(np.argmax(q))]["frame_index"] in picked, key
        if len(rows) >= 2:
            assert len(picked) == 2
    with open(tmp_path / "review.csv", newline="") as f:
        sheet = list(csv.DictReader(f))
    assert {row["track_id"] for row in sheet if row["source"].endswith(".mp4")} <= {
        str(tid) for _, tid in want}
    # combined with other filters: --per-track picks among what is left
    r = cage("export", real["parquet"], "-o", tmp_path / "ds2", "--per-track", 1, "-q",
             "--min-face", 40)
    assert r.exit_code == 0, r.stderr
    _, m2 = read_manifest(tmp_path / "ds2")
    assert all(min(m["x2"] - m["x1"], m["y2"] - m["y1"]) >= 40 for m in m2)
    assert max(Counter((m["source"], m["track_id"]) for m in m2 if m["media"] == "video")
               .values()) == 1


# --- outputs without track ids: the old behaviour -------------------------------------------

def test_outputs_without_track_ids(real, tmp_path) -> None:
    """A schema-v1 output (no track_id column): summary says tracks are not available, plot
    averages the faces of each frame, render colours boxes by label, --per-track refuses."""
    table, _ = load_annotations(real["v1"])
    assert table.column("track_id").null_count == table.num_rows
    r = cage("summary", real["v1"], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert all(s["tracks"] is None for s in result["sources"])
    assert result["total"]["tracks"] is None
    r = cage("summary", real["v1"])
    assert r.exit_code == 0 and "tracks: not available for 2 of 2 videos" in r.stdout

    fig = build_figure(table)
    titles = [ax.get_title() for ax in fig.axes]
    assert "interview.mp4: valence & arousal (mean over faces)" in titles
    assert not any("per track" in t for t in titles)
    assert cage("plot", real["v1"], "-o", tmp_path / "v1.png").exit_code == 0

    rows = [r for r in table.to_pylist() if r["source"].endswith("interview.mp4")
            and r["frame_index"] == 5]
    image = Image.fromarray(next(iter(video_frames_at(str(INTERVIEW), [5]))).image)
    draw_faces(image, rows)
    drawn = np.asarray(image).astype(int)
    for row in rows:
        x, y = int(round(row["x1"])), int((row["y1"] + row["y2"]) / 2)
        patch = drawn[y - 1:y + 2, max(0, x - 1):x + 2].reshape(-1, 3)
        assert np.abs(patch - np.array(LABEL_COLORS[row["label"]])).sum(axis=1).min() < 30

    r = cage("export", real["v1"], "-o", tmp_path / "ds", "--per-track", "3")
    assert r.exit_code == 2 and "no track ids" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists()
    for cmd in (["export", real["v1"], "-o", tmp_path / "x", "--per-track", "0"],
                ["summary", real["v1"], "--tracks", "-1"],
                ["plot", real["v1"], "-o", tmp_path / "y.png", "--tracks", "-1"]):
        r = cage(*cmd)
        assert r.exit_code == 2 and r.stderr.startswith("cage: error: "), (cmd, r.stderr)

