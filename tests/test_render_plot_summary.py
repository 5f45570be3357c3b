"""`cage render`, `cage plot` and `cage summary` on real `cage annotate` outputs (issue 8).

Annotation runs are module-scoped (one photo run, one short video run) to keep this quick.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import CLIP, MEDIA, MULTI, NOFACE, SINGLE, cage
from PIL import Image
from pyarrow.fs import FileSelector

from cage_cli.annotation.io.decode import load_image
from cage_cli.annotation.io.read import read_annotations, read_run_info
from cage_cli.annotation.io.write import merge_parts
from cage_cli.schema import EXPRESSIONS
from cage_cli.view.plot import build_figure
from cage_cli.view.render import LABEL_COLORS, render_video
from cage_cli.view.summary import load_annotations, summarize

VIDEO_FRAMES = 8  # sampled at --fps 5: frames 0, 5, ..., 35 (0 to 1.4 s)


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def originals() -> dict[Path, tuple[str, int]]:
    return {p: fingerprint(p) for p in (SINGLE, MULTI, NOFACE, CLIP)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, originals) -> dict[str, Path]:
    """One real run over a folder: 3 photos (links to the example photos) and a broken file."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "in"
    folder.mkdir()
    for p in (SINGLE, MULTI, NOFACE):
        (folder / p.name).symlink_to(p)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = root / "faces.parquet"
    r = cage("annotate", folder, "-o", out, "-q")
    assert r.exit_code == 1, r.stderr  # broken.jpg fails, the others are written
    info = read_run_info(out)[0]
    # JSONL and CSV written by annotate's own writer (the same merge step as -o x.jsonl/.csv).
    for fmt in ("jsonl", "csv"):
        merge_parts([out], root / f"faces.{fmt}", fmt, info)
    return {"folder": folder, "parquet": out, "jsonl": root / "faces.jsonl",
            "csv": root / "faces.csv", "root": root}


@pytest.fixture(scope="module")
def video(tmp_path_factory, originals) -> dict[str, Path]:
    """One real run over the short clip, sampled (--fps 5, --max-frames), to a dataset folder."""
    root = tmp_path_factory.mktemp("video")
    out = root / "faces_dir"
    r = cage("annotate", CLIP, "-o", f"{out}/", "--fps", "5", "--max-frames",
             str(VIDEO_FRAMES), "-q")
    assert r.exit_code == 0, r.stderr
    return {"dataset": out, "root": root}


def one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cage: error: "), r.stderr
    return lines[0]


def video_info(path: Path) -> dict:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        return {"frames": len(pts), "pts": pts, "time_base": s.time_base,
                "size": (s.codec_context.width, s.codec_context.height),
                "codec": s.codec_context.name, "duration": c.duration / 1e6,
                "stream_duration": float(s.duration * s.time_base)}


# --- render -------------------------------------------------------------------------------

def test_render_folder_of_photos(photos, tmp_path, originals) -> None:
    out = tmp_path / "rendered"
    r = cage("render", photos["parquet"], "--source", photos["folder"], "-o", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["multiface.jpg", "single_face.jpg"]
    table = read_annotations(photos["parquet"])
    for name in ("single_face.jpg", "multiface.jpg"):
        src = photos["folder"] / name
        rendered = Image.open(out / name)
        original = load_image(str(src))
        assert rendered.size == (original.shape[1], original.shape[0])  # same size, EXIF-aware
        drawn = np.asarray(rendered.convert("RGB")).astype(int)
        # the top edge of each box is drawn in its label's colour
        rows = [row for row in table.to_pylist() if row["source"].endswith(name)]
        assert rows
        for row in rows:
            x = int((row["x1"] + row["x2"]) / 2)
            y = int(row["y1"]) + 1
            patch = drawn[max(0, y - 1): y + 2, x - 1: x + 2].reshape(-1, 3)
            want = np.array(LABEL_COLORS[row["label"]])
            assert np.abs(patch - want).sum(axis=1).min() < 90, (name, row["label"], patch)
        assert np.abs(drawn - original.astype(int)).mean() > 0.5  # something was drawn
    # sources untouched (the links point at the originals in examples/)
    assert {p: fingerprint(p) for p in originals} == originals


def test_render_one_photo_and_refusals(photos, tmp_path) -> None:
    ann, src = photos["parquet"], photos["folder"] / "multiface.jpg"
    out = tmp_path / "multi.png"
    assert cage("render", ann, "--source", src, "-o", out).exit_code == 0
    assert Image.open(out).size == Image.open(MULTI).size and Image.open(out).format == "PNG"
    before = out.stat().st_mtime_ns
    assert "exists" in one_line_error(cage("render", ann, "--source", src, "-o", out))
    assert out.stat().st_mtime_ns == before
    assert cage("render", ann, "--source", src, "-o", out, "--overwrite").exit_code == 0
    # never over the source, even with --overwrite (also through the folder it is in)
    for target in (src, photos["folder"]):
        e = one_line_error(cage("render", ann, "--source", src, "-o", target, "--overwrite"))
        assert "refusing to write over the source" in e
    # a file the annotations do not name: one clear line
    e = one_line_error(cage("render", ann, "--source", MEDIA / "portrait_paul_rudd.jpg",
                            "-o", tmp_path / "x.jpg"))
    assert "source not found" in e
    e = one_line_error(cage("render", ann, "--source", src, "-o", tmp_path / "x.txt"))
    assert "image format" in e


def test_render_video_frames_timing_and_hold(video, tmp_path, originals) -> None:
    out = tmp_path / "clip.mp4"
    r = cage("render", video["dataset"], "--source", CLIP, "-o", out)
    assert r.exit_code == 0, r.stderr
    src, got = video_info(CLIP), video_info(out)
    assert got["codec"] == "h264" and got["size"] == src["size"]
    assert got["frames"] == src["frames"] == 115
    # the same frame timestamps, hence the same frame rate and duration
    assert [p * got["time_base"] for p in got["pts"]] == [p * src["time_base"]
                                                          for p in src["pts"]]
    assert got["duration"] == pytest.approx(src["duration"], abs=0.01)
    assert got["stream_duration"] == pytest.approx(src["stream_duration"], abs=0.01)
    import decord

    vr = decord.VideoReader(str(out))
    assert len(vr) == 115 and vr[0].shape == (336, 596, 3)
    assert fingerprint(CLIP) == originals[CLIP]

    # Hold: unsampled frames carry the last sampled frame's faces for at most `hold` seconds.
    table = read_annotations(video["dataset"])
    sampled = sorted(set(table.column("frame_index").to_pylist()))
    assert len(sampled) == VIDEO_FRAMES
    times = [float(p * src["time_base"]) for p in src["pts"]]
    last = times[sampled[-1]]
    for hold in (0.0, 0.5):
        o = tmp_path / f"hold{hold}.mp4"
        stats = render_video(CLIP, table, o, hold=hold, run_info=read_run_info(video["dataset"]))
        want = sum(1 for i, t in enumerate(times) if i <= sampled[-1] or t <= last + hold + 1e-6)
        if hold == 0:
            want = len(sampled)
        assert stats["frames"] == 115 and stats["annotated"] == want, (hold, stats)
    # A sampled frame without faces (here: frame 10's rows removed) is clean and ends the hold
    # when the run metadata says it was sampled; without metadata the hold covers it.
    assert sampled[2] == 10
    no10 = table.filter(pc.not_equal(table.column("frame_index"), 10))
    stats = render_video(CLIP, no10, tmp_path / "no10.mp4", hold=0.5,
                         run_info=read_run_info(video["dataset"]))
    assert stats["annotated"] == want - 5  # frames 10..14
    stats = render_video(CLIP, no10, tmp_path / "no10b.mp4", hold=0.5, run_info=None)
    assert stats["annotated"] == want
    # a frame after the hold is clean: it matches the source up to encoding noise
    with av.open(str(CLIP)) as a, av.open(str(tmp_path / "hold0.5.mp4")) as b:
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    late = len(times) - 1
    assert np.abs(fa[late].astype(int) - fb[late]).mean() < 3
    row = next(r for r in table.to_pylist() if r["frame_index"] == 0)  # drawn over
    x1, y1, x2, y2 = (int(row[k]) for k in ("x1", "y1", "x2", "y2"))
    diff = np.abs(fa[0].astype(int) - fb[0])[max(0, y1 - 2): y2 + 2, max(0, x1 - 2): x2 + 2]
    assert diff.mean() > 5


def test_render_from_jsonl_and_default_sources(photos, tmp_path) -> None:
    out = tmp_path / "from_jsonl"
    # no --source: the paths recorded in the annotations; several -> a folder
    r = cage("render", photos["jsonl"], "-o", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["multiface.jpg", "single_face.jpg"]


# --- plot ---------------------------------------------------------------------------------

def test_plot_figure_axes(photos, video) -> None:
    table, _ = load_annotations(photos["parquet"])
    fig = build_figure(table)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2
    assert titles[0].startswith("valence / arousal") and "expression distribution" in titles[1]
    circ = fig.axes[0]
    assert circ.get_xlabel() == "valence" and circ.get_ylabel() == "arousal"
    assert {t.get_text() for t in circ.texts} >= set(EXPRESSIONS)  # the 8 centroids labelled
    bars = fig.axes[1].patches
    labels = Counter(table.column("label").to_pylist())
    assert sum(b.get_height() for b in bars) == table.num_rows == sum(labels.values())

    vt, _ = load_annotations(video["dataset"])
    both = pa.concat_tables([table, vt])
    # --tracks 0: one valence/arousal panel (mean over each frame's faces) and one of the top
    # class probabilities for the video (the layout of outputs without track ids)
    fig = build_figure(both, tracks=0)
    assert len(fig.axes) == 4  # circumplex, distribution, 2 timeline panels for the one video
    tl = [ax for ax in fig.axes if ax.get_title().startswith("short_clip.mp4")]
    assert len(tl) == 2 and all(ax.get_xlabel() == "time (s)" for ax in tl)
    va_lines = {ln.get_label() for ln in tl[0].get_lines()}
    assert {"valence", "arousal"} <= va_lines
    assert len(tl[0].get_lines()[0].get_xdata()) == VIDEO_FRAMES
    # with track ids (default): valence and arousal per track and a label strip per track
    # (tests/test_track_views.py checks the lines against the rows)
    fig = build_figure(both)
    tl = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("short_clip.mp4")]
    assert len(fig.axes) == 5 and len(tl) == 3, tl
    assert any("valence per track" in t for t in tl) and any("arousal per track" in t for t in tl)


def test_plot_faces_without_label(photos) -> None:
    """A valence/arousal-only model (cage-maxvit-t-va) gives null labels and probabilities:
    its faces are still points on the circumplex."""
    table, _ = load_annotations(photos["parquet"])
    nulls = {c: pa.nulls(table.num_rows, table.schema.field(c).type)
             for c in ["label"] + [f"p_{e}" for e in EXPRESSIONS]}
    va_only = pa.table({c: nulls.get(c, table.column(c)) for c in table.column_names})
    circ = build_figure(va_only).axes[0]
    points = np.concatenate([c.get_offsets() for c in circ.collections
                             if c.get_label().startswith("no label")])
    faces = table.filter(pc.is_valid(table.column("face_index")))
    assert len(points) == faces.num_rows == 7
    np.testing.assert_allclose(sorted(points[:, 0]),
                               sorted(faces.column("valence").to_pylist()), rtol=1e-6)


def test_plot_files(photos, video, tmp_path) -> None:
    png, svg, pdf = tmp_path / "p.png", tmp_path / "p.svg", tmp_path / "p.pdf"
    assert cage("plot", photos["parquet"], "-o", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 500
    assert cage("plot", video["dataset"], "-o", svg).exit_code == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "short_clip.mp4" in text
    assert cage("plot", photos["csv"], "-o", pdf, "--source", "single_face.jpg").exit_code == 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert "exists" in one_line_error(cage("plot", photos["parquet"], "-o", png))
    assert ".png" in one_line_error(cage("plot", photos["parquet"], "-o", tmp_path / "p.gif"))
    e = one_line_error(cage("plot", photos["parquet"], "-o", tmp_path / "q.png", "--source",
                            "nobody.jpg"))
    assert "source not found" in e


# --- summary ------------------------------------------------------------------------------

def expected_summary(table: pa.Table) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in table.to_pylist():
        if row["face_index"] is None:
            continue
        s = out.setdefault(row["source"], {"frames": set(), "faces": 0, "labels": Counter(),
                                           "v": [], "a": []})
        s["frames"].add(row["frame_index"])
        s["faces"] += 1
        s["labels"][row["label"]] += 1
        s["v"].append(row["valence"])
        s["a"].append(row["arousal"])
    return out


def check_summary(result: dict, table: pa.Table) -> None:
    want = expected_summary(table)
    assert [r["source"] for r in result["sources"]] == list(want)
    for r in result["sources"]:
        w = want[r["source"]]
        assert r["frames_with_faces"] == len(w["frames"]) and r["faces"] == w["faces"]
        top = max(w["labels"].values())
        assert w["labels"][r["dominant_expression"]] == top
        assert r["dominant_share"] == pytest.approx(top / w["faces"], abs=1e-6)
        assert r["mean_valence"] == pytest.approx(np.mean(w["v"]), abs=1e-5)
        assert r["mean_arousal"] == pytest.approx(np.mean(w["a"]), abs=1e-5)
    assert result["total"]["faces"] == sum(w["faces"] for w in want.values())
    assert result["total"]["frames_with_faces"] == sum(len(w["frames"]) for w in want.values())


def test_summary_json_and_failed_files(photos, video) -> None:
    r = cage("summary", photos["parquet"], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    table = read_annotations(photos["parquet"])
    check_summary(result, table)
    assert {Path(s["source"]).name: s["faces"] for s in result["sources"]} == {
        "multiface.jpg": 6, "single_face.jpg": 1}
    assert [Path(f["source"]).name for f in result["failed"]] == ["broken.jpg"]
    r = cage("summary", video["dataset"], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    check_summary(result, read_annotations(video["dataset"]))
    assert result["failed"] == [] and result["sources"][0]["media"] == "video"


def test_summary_table(photos) -> None:
    r = cage("summary", photos["parquet"])
    assert r.exit_code == 0, r.stderr
    assert "multiface.jpg" in r.stdout and "single_face.jpg" in r.stdout
    assert "failed files" in r.stdout and "broken.jpg" in r.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_jsonl_and_csv_inputs(photos, fmt) -> None:
    r = cage("summary", photos[fmt], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    ref = summarize(*load_annotations(photos["parquet"]))
    assert result["sources"] == ref["sources"] and result["total"] == ref["total"]
    assert result["failed"] is None  # JSONL/CSV keep no run metadata
    assert "unknown" in cage("summary", photos[fmt]).stdout


def test_errors_are_one_line(tmp_path, photos) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("hello")
    other = tmp_path / "other.jsonl"
    other.write_text('{"x": 1}\n')
    for cmd in (["summary"], ["plot", "-o", tmp_path / "p.png"],
                ["render", "-o", tmp_path / "r/"]):
        e = one_line_error(cage(cmd[0], tmp_path / "missing.parquet", *cmd[1:]))
        assert "no such file" in e
        assert "not a cage annotation file" in one_line_error(cage(cmd[0], bad, *cmd[1:]))
        assert "not a cage annotation file" in one_line_error(cage(cmd[0], other, *cmd[1:]))
    # annotations whose recorded source paths are gone, and no --source given
    rows = read_annotations(photos["parquet"]).to_pylist()
    gone = [{**r, "source": "/nonexistent/" + Path(r["source"]).name} for r in rows]
    (tmp_path / "gone.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gone))
    e = one_line_error(cage("render", tmp_path / "gone.jsonl", "-o", tmp_path / "g/"))
    assert "source not found" in e and "--source" in e
    # an empty output (no faces anywhere) is valid
    merge_parts([], tmp_path / "empty.jsonl", "jsonl", {})
    r = cage("summary", tmp_path / "empty.jsonl", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["total"]["faces"] == 0


def test_default_outputs_go_beside_the_annotations(photos, tmp_path) -> None:
    """Without -o, plot writes ANNOTATIONS.png and render a folder ANNOTATIONS_rendered/."""
    ann = tmp_path / "faces.parquet"
    shutil.copyfile(photos["parquet"], ann)
    r = cage("plot", ann)
    assert r.exit_code == 0, r.stderr
    assert f"wrote {tmp_path / 'faces.png'}" in r.stderr
    assert Image.open(tmp_path / "faces.png").format == "PNG"
    r = cage("render", ann, "--source", photos["folder"], "-q")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "faces_rendered").iterdir()) == [
        "multiface.jpg", "single_face.jpg"]
    e = one_line_error(cage("plot", ann))
    assert "exists" in e



def test_read_commands_take_uri_outputs(s3, tmp_path, monkeypatch) -> None:
    """An output written to a URI (-o s3://..., file://...) is read back by summary, plot,
    render and export as a local one is; a default figure goes to the working folder; a bad
    URI is one line, exit 2."""
    uri, _ = s3
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local.parquet"
    outputs = [uri("views/faces.parquet"), uri("views/ds/"), f"file://{tmp_path}/ds/"]
    for out in [local, *outputs]:  # the URI outputs with a part per input, as a slow run
        extra = ["--part-seconds", "0"] if out != local else []
        r = cage("annotate", SINGLE, MULTI, CLIP, "--max-frames", "10", "-o", out, "-q", *extra)
        assert r.exit_code == 0, r.stderr
    want = json.loads(cage("summary", local, "--json").stdout)
    want_rows = read_annotations(local)
    s3_parts = [i.path for i in s3[1].get_file_info(FileSelector("bkt/views/ds"))
                if i.base_name.startswith("part-")]
    assert len(s3_parts) == 3  # one per input, so the order of parts is tested too
    for out in outputs:  # exactly: the same rows in the same order, bit for bit
        assert read_annotations(out).equals(want_rows), out
        r = cage("summary", out, "--json")
        assert r.exit_code == 0, r.stderr
        got = json.loads(r.stdout)
        assert got.pop("annotations") == out.replace("k:s@", "")  # credentials not shown
        assert got == {k: v for k, v in want.items() if k != "annotations"}
    assert cage("plot", uri("views/faces.parquet")).exit_code == 0
    assert Image.open(tmp_path / "faces.png").size[0] > 100  # faces.png in the working folder
    r = cage("render", uri("views/faces.parquet"), "-o", tmp_path / "rendered/", "-q")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "rendered").iterdir()) == [
        MULTI.name, CLIP.name, SINGLE.name]
    r = cage("export", uri("views/ds/"), "-o", tmp_path / "exported", "-q")
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "exported" / "images").rglob("*.jpg"))) == want_rows.num_rows
    r = cage("summary", "nope://bucket/faces.parquet")
    assert r.exit_code == 2 and r.stderr.strip() == (
        "cage: error: cannot open nope://bucket/faces.parquet: Unrecognized filesystem type "
        "in URI: nope://bucket/faces.parquet")
