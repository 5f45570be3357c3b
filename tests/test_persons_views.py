"""Persons downstream (issue 25, item 4): `cage summary` per person, `cage plot` per-person
timelines with face thumbnails, `cage render` person colours, `cage export --persons` /
`--per-person`.

Real media: two videos made of hard cuts between two shared portraits (A B A and B A B, so
each video has three tracks and two persons, and each person is in both videos), and a third
person's portrait, annotated with `cage annotate --persons`; `cage persons` links them.
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
from conftest import CLIP, MEDIA, cage
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.offsetbox import AnnotationBbox
from PIL import Image
from test_track import _face, _write

from cage_cli.annotation.identity.embed import face_quality
from cage_cli.annotation.io.decode import video_frames_at
from cage_cli.export.prelabel import crop_region, crop_square, pick_diverse, read_manifest
from cage_cli.schema import EXPRESSIONS, LANDMARK_COLUMNS
from cage_cli.view.plot import THUMB_PX, build_figure, cut_thumbnails, pick_thumbnails
from cage_cli.view.render import draw_faces, person_color, track_color
from cage_cli.view.summary import load_annotations

SHOT = 8  # frames per shot, 10 fps


def _shots(order: str, a: np.ndarray, b: np.ndarray, path: Path) -> Path:
    frames = []
    for k, who in enumerate(order):
        for j in range(SHOT):
            canvas = np.full((240, 320, 3), 100 + 40 * (k % 2), np.uint8)
            x = 40 + 60 * (k % 3) + 2 * j
            canvas[60:180, x:x + 120] = a if who == "A" else b
            frames.append(canvas)
    return _write(path, frames)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("persons_views")
    media = root / "media"
    media.mkdir()
    a = _face(MEDIA / "portrait_kate_siegel.jpg", 120)
    b = _face(MEDIA / "portrait_paul_rudd.jpg", 120)
    _shots("ABA", a, b, media / "aba.mp4")
    _shots("BAB", a, b, media / "bab.mp4")
    (media / "jolie.jpg").symlink_to(MEDIA / "portrait_angelina_jolie.jpg")
    out = root / "faces.parquet"
    r = cage("annotate", media, "--persons", "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    persons = root / "persons.parquet"
    r = cage("persons", out, "-o", persons)
    assert r.exit_code == 0, r.stderr
    table, _ = load_annotations(out)
    return {"root": root, "media": media, "out": out, "persons": persons, "table": table,
            "rows": table.drop_columns(["embedding"]).to_pylist()}


def faces_of(run: dict, name: str) -> list[dict]:
    return [r for r in run["rows"] if Path(r["source"]).name == name
            and r["face_index"] is not None]


def test_the_fixture_has_three_tracks_and_two_persons_per_video(run) -> None:
    for name in ("aba.mp4", "bab.mp4"):
        rows = faces_of(run, name)
        person_of = {r["track_id"]: r["person_id"] for r in rows}
        assert sorted(person_of) == [0, 1, 2]
        assert person_of == {0: 0, 1: 1, 2: 0}  # shots 1 and 3 are one person
    run_wide = pq.read_table(run["persons"]).to_pylist()
    assert len({p["person"] for p in run_wide}) == 3


# --- cage summary ----------------------------------------------------------------------------

def test_summary_per_person(run) -> None:
    r = cage("summary", run["out"], "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    by = {Path(s["source"]).name: s for s in result["sources"]}
    assert by["jolie.jpg"]["persons"] is None
    assert result["total"]["persons"] == 4
    for name in ("aba.mp4", "bab.mp4"):
        rows = faces_of(run, name)
        got = by[name]["persons"]
        assert [p["person_id"] for p in got] == [0, 1]
        for p in got:
            mine = sorted((r for r in rows if r["person_id"] == p["person_id"]),
                          key=lambda r: r["frame_index"])
            labels = Counter(r["label"] for r in mine)
            assert p["tracks"] == len({r["track_id"] for r in mine})
            assert p["frames"] == len(mine)
            # every frame was sampled, 10 fps: a frame is 0.1 s on screen
            assert p["time_on_screen_s"] == pytest.approx(0.1 * len(mine), abs=1e-6)
            assert p["first_s"] == pytest.approx(mine[0]["timestamp_s"])
            assert p["last_s"] == pytest.approx(mine[-1]["timestamp_s"])
            assert labels[p["dominant_expression"]] == max(labels.values())
            assert p["mean_valence"] == pytest.approx(np.mean([r["valence"] for r in mine]),
                                                      abs=1e-5)
            assert p["mean_arousal"] == pytest.approx(np.mean([r["arousal"] for r in mine]),
                                                      abs=1e-5)
        assert got[0]["tracks"] == 2 and got[1]["tracks"] == 1
    r = cage("summary", run["out"])
    assert r.exit_code == 0, r.stderr
    assert "persons in aba.mp4: 2" in r.stdout and "persons in bab.mp4: 2" in r.stdout
    assert "on screen" in r.stdout
    # without person ids: no persons anywhere
    plain = run["root"] / "plain.parquet"
    assert cage("annotate", CLIP, "--max-frames", "5", "-o", plain, "-q").exit_code == 0
    result = json.loads(cage("summary", plain, "--json").stdout)
    assert result["total"]["persons"] is None and result["sources"][0]["persons"] is None
    out = cage("summary", plain).stdout
    assert "persons in" not in out and "   persons" not in out


# --- cage plot -------------------------------------------------------------------------------

def test_pick_thumbnails_takes_each_persons_best_face(run) -> None:
    rows = run["table"].filter(pa.compute.match_substring(run["table"].column("source"),
                                                          "aba.mp4"))
    picks = pick_thumbnails(rows, "person_id")
    assert sorted(picks) == [0, 1]
    faces = faces_of(run, "aba.mp4")
    for pid, pick in picks.items():
        mine = [r for r in faces if r["person_id"] == pid]
        marks = np.array([[r[c] for c in LANDMARK_COLUMNS] for r in mine]).reshape(-1, 5, 2)
        q = face_quality(marks) * np.array([r["det_score"] for r in mine])
        assert pick["frame_index"] == mine[int(np.argmax(q))]["frame_index"]
    by_track = pick_thumbnails(rows, "track_id")
    assert sorted(by_track) == [0, 1, 2]

    thumbs = cut_thumbnails(rows.column("source")[0].as_py(), "video", picks, [Path.cwd()])
    assert sorted(thumbs) == [0, 1]
    for pid, image in thumbs.items():  # the face box's region of the frame, resized
        pick = picks[pid]
        frame = next(iter(video_frames_at(str(run["media"] / "aba.mp4"),
                                          [pick["frame_index"]]))).image
        region = crop_region((pick["x1"], pick["y1"], pick["x2"], pick["y2"]), 0.15)
        assert image.shape == (THUMB_PX, THUMB_PX, 3)
        assert np.array_equal(image, crop_square(frame, region, THUMB_PX))
    # a missing source: no thumbnails and a note naming it
    notes: list[str] = []
    assert cut_thumbnails("gone/aba.mp4", "video", picks, [Path.cwd()], notes.append) == {}
    assert len(notes) == 1 and "gone/aba.mp4" in notes[0] and "not found" in notes[0]


def _thumbs_of(fig, title: str) -> list[np.ndarray]:
    ax = next(a for a in fig.axes if a.get_title() == title)
    return [c.offsetbox.get_data() for c in ax.get_children() if isinstance(c, AnnotationBbox)]


def test_plot_per_person_with_thumbnails(run) -> None:
    fig = build_figure(run["table"])
    for name in ("aba.mp4", "bab.mp4"):
        v_ax = next(a for a in fig.axes if a.get_title() == f"{name}: valence per person "
                    "(2 persons)")
        lines = {ln.get_label().split()[0]: ln for ln in v_ax.get_lines()
                 if ln.get_label().startswith("P")}
        assert sorted(lines) == ["P0", "P1"]
        for label, ln in lines.items():
            pid = int(label[1:])
            want = [r["valence"] for r in sorted(faces_of(run, name),
                                                 key=lambda r: r["timestamp_s"])
                    if r["person_id"] == pid]
            y = np.asarray(ln.get_ydata(), float)
            assert y[~np.isnan(y)] == pytest.approx(want, abs=1e-6)  # all the person's tracks
            assert ln.get_color() == "#{:02x}{:02x}{:02x}".format(*person_color(pid))
        assert "2 tracks" in lines["P0"].get_label()
        strip = next(a for a in fig.axes if a.get_title() == f"{name}: label per person")
        assert [t.get_text() for t in strip.get_yticklabels()] == ["P0", "P1"]
        assert len(_thumbs_of(fig, f"{name}: label per person")) == 2
    # Who is who: A is P0 in aba.mp4 and P1 in bab.mp4; their thumbnails look alike, and
    # unlike B's.
    (a0, b0), (b1, a1) = (_thumbs_of(fig, f"{n}: label per person") for n in ("aba.mp4",
                                                                             "bab.mp4"))

    def diff(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x.astype(float) - y.astype(float)).mean())

    assert diff(a0, a1) < 0.7 * diff(a0, b1) and diff(b0, b1) < 0.7 * diff(b0, a1)

    # drawn where they belong: the pixels inside each thumbnail's box are that thumbnail
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    ax = next(a for a in fig.axes if a.get_title() == "aba.mp4: label per person")
    boxes = [c for c in ax.get_children() if isinstance(c, AnnotationBbox)]

    def small(image: np.ndarray) -> np.ndarray:  # 8 x 8: a pixel's offset does not matter
        return np.asarray(Image.fromarray(image.astype(np.uint8)).resize((8, 8)), float)

    for box, other in zip(boxes, boxes[::-1], strict=True):
        e = box.offsetbox.get_window_extent(canvas.get_renderer())
        h = pixels.shape[0]
        drawn = small(pixels[int(h - e.y1):int(h - e.y0), int(e.x0):int(e.x1)])
        mine = np.abs(drawn - small(box.offsetbox.get_data())).mean()
        assert mine < 15 and mine < 0.5 * np.abs(drawn - small(other.offsetbox.get_data())
                                                 ).mean()
    # the lines' legends show the faces too (one image per entry)
    legend = next(a for a in fig.axes if a.get_title().startswith("aba.mp4: arousal")
                  ).get_legend()
    images = [c for c in legend.findobj() if type(c).__name__ == "BboxImage"]
    assert len(images) == 2


def test_plot_cli_thumbnails_and_without(run, tmp_path) -> None:
    with_faces, without = tmp_path / "with.png", tmp_path / "without.png"
    r = cage("plot", run["out"], "-o", with_faces)
    assert r.exit_code == 0 and "note" not in r.stderr, r.stderr
    r = cage("plot", run["out"], "-o", without, "--no-thumbnails")
    assert r.exit_code == 0, r.stderr
    big, small = Image.open(with_faces), Image.open(without)
    assert big.size[0] == small.size[0] and big.size[1] > small.size[1]  # taller lanes
    # thumbnails left of the strips: colourful pixels there, none without them
    def left_strip_colour(im: Image.Image) -> float:
        a = np.asarray(im.convert("RGB"), float)
        part = a[int(a.shape[0] * 0.3):, : int(a.shape[1] * 0.06)]
        return float((part.max(axis=2) - part.min(axis=2)).mean())
    assert left_strip_colour(big) > 3 * left_strip_colour(small)
    # relative sources not found from here: the plot is still written, one note per video;
    # --root finds them
    moved = tmp_path / "moved.parquet"
    t = pq.read_table(run["out"])
    src = pa.array([s.replace(str(run["media"]), "media") for s in
                    t.column("source").to_pylist()])
    pq.write_table(t.set_column(t.schema.get_field_index("source"), "source", src), moved)
    r = cage("plot", moved, "-o", tmp_path / "moved.png")
    assert r.exit_code == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("cage: note: no thumbnails")]
    assert len(notes) == 2 and "media/aba.mp4" in notes[0] and "--root" in notes[0]
    r = cage("plot", moved, "-o", tmp_path / "rooted.png", "--root", run["root"])
    assert r.exit_code == 0 and "note" not in r.stderr, r.stderr
    assert Image.open(tmp_path / "rooted.png").size == big.size


# --- cage render -----------------------------------------------------------------------------

def test_render_colours_by_person(run, tmp_path) -> None:
    faces = faces_of(run, "aba.mp4")
    by_frame = {r["frame_index"]: r for r in faces}
    frames = {f.index: f.image for f in video_frames_at(str(run["media"] / "aba.mp4"),
                                                        sorted(by_frame))}

    def edge_colour(image: np.ndarray, r: dict) -> np.ndarray:
        x, y = int(round(r["x1"])), int((r["y1"] + r["y2"]) / 2)
        return image[y - 1:y + 2, max(0, x - 1):x + 2].reshape(-1, 3).astype(int)

    for r in faces:  # track 2 is person 0: blue like track 0, not track 2's green
        image = Image.fromarray(frames[r["frame_index"]])
        draw_faces(image, [r])
        patch = edge_colour(np.asarray(image), r)
        assert np.abs(patch - np.array(person_color(r["person_id"]))).sum(1).min() < 30
    assert person_color(0) != track_color(2)
    # the CLI: the rendered video, a frame of the third shot, in person 0's colour
    out = tmp_path / "aba.mp4"
    r = cage("render", run["out"], "--source", run["media"] / "aba.mp4", "-o", out)
    assert r.exit_code == 0, r.stderr
    third = next(r for r in faces if r["track_id"] == 2)
    with av.open(str(out)) as c:
        image = next(f for i, f in enumerate(c.decode(video=0)) if i == third["frame_index"])
    # a 1-pixel line in a small H.264 frame is smeared into the grey around it: along the
    # box's left edge blue stands out (person 0: 31,119,180), not green (track 2: 44,160,44)
    f = image.to_ndarray(format="rgb24").astype(int)
    x = int(round(third["x1"]))
    edge = f[int(third["y1"]) + 4:int(third["y2"]) - 4, x - 1:x + 2].reshape(-1, 3).mean(0)
    assert edge[2] > edge[1] + 15 and edge[2] > edge[0] + 15, edge


# --- cage export -----------------------------------------------------------------------------

def test_export_persons_keeps_every_person_in_one_split(run, tmp_path) -> None:
    persons = {(p["source"], p["frame_index"], p["face_index"]): p["person"]
               for p in pq.read_table(run["persons"]).to_pylist()}
    n_faces = sum(1 for r in run["rows"] if r["face_index"] is not None)
    parted = 0
    for seed in range(4):
        ds = tmp_path / f"ds{seed}"
        r = cage("export", run["out"], "-o", ds, "--persons", run["persons"], "--split",
                 "train=0.5,test=0.5", "--seed", seed)
        assert r.exit_code == 0, r.stderr
        assert "split by" in r.stderr and "person" in r.stderr
        _, manifest = read_manifest(ds)
        assert len(manifest) == n_faces  # nothing dropped
        split_of: dict[int, set[str]] = defaultdict(set)
        for m in manifest:
            assert m["person"] == persons[(m["source"], m["frame_index"], m["face_index"])]
            split_of[m["person"]].add(m["split"])
        assert all(len(s) == 1 for s in split_of.values()), split_of
        by_source = defaultdict(set)
        for m in manifest:
            by_source[m["source"]].add(m["split"])
        parted += sum(len(s) > 1 for s in by_source.values())
    assert parted > 0  # a video's two persons do go to different splits
    # without --persons: by whole source, as before; manifest still has person_id, no person
    ds = tmp_path / "plain"
    assert cage("export", run["out"], "-o", ds, "--split", "train=0.5,test=0.5",
                "-q").exit_code == 0
    _, manifest = read_manifest(ds)
    assert all(len({m["split"] for m in manifest if m["source"] == s}) == 1
               for s in {m["source"] for m in manifest})
    with open(ds / "manifest.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "person_id" in header and "person" not in header


def test_export_per_person_caps_faces_per_person(run, tmp_path) -> None:
    n = 3
    ds = tmp_path / "pp"
    r = cage("export", run["out"], "-o", ds, "--per-person", n, "-q")
    assert r.exit_code == 0, r.stderr
    _, manifest = read_manifest(ds)
    got = Counter((Path(m["source"]).name, m["person_id"]) for m in manifest)
    want = Counter((Path(r["source"]).name, r["person_id"]) for r in run["rows"]
                   if r["face_index"] is not None)
    assert got == {k: min(n, v) for k, v in want.items()}
    # run-wide: at most n per person over both videos, spread over both
    ds = tmp_path / "pw"
    r = cage("export", run["out"], "-o", ds, "--per-person", n, "--persons", run["persons"],
             "-q", "--manifest-format", "parquet")
    assert r.exit_code == 0, r.stderr
    _, manifest = read_manifest(ds)
    per = Counter(m["person"] for m in manifest)
    assert sorted(per.values()) == [1, n, n]  # the portrait's one face, A, B
    for p, k in per.items():
        if k == n:
            assert len({m["source"] for m in manifest if m["person"] == p}) == 2
    # refusals: one line, exit 2
    plain = tmp_path / "plain.parquet"
    assert cage("annotate", CLIP, "--max-frames", "3", "-o", plain, "-q").exit_code == 0
    for args, words in (
            ([plain, "--per-person", "2"], "no person ids"),
            ([run["out"], "--per-person", "0"], "--per-person must be"),
            ([plain, "--persons", run["persons"]], "not in it"),
            ([run["out"], "--persons", tmp_path / "none.parquet"], "no such file"),
            ([run["out"], "--persons", run["out"]], "not a `cage persons` table")):
        r = cage("export", *args, "-o", tmp_path / "x")
        assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_review_keeps_the_person_columns(run, tmp_path) -> None:
    ds, sheet = tmp_path / "ds", tmp_path / "review.csv"
    assert cage("export", run["out"], "-o", ds, "--persons", run["persons"], "--per-person",
                "2", "--review-csv", sheet, "-q").exit_code == 0
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["reviewed_label"] = "reject"
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    before = read_manifest(ds)[1]
    assert cage("export", ds, "--apply-review", sheet, "-q").exit_code == 0
    after = read_manifest(ds)[1]
    assert [m["person"] for m in after] == [m["person"] for m in before]
    assert [m["person_id"] for m in after] == [m["person_id"] for m in before]
    assert sum(m["rejected"] for m in after) == 1


def test_pick_diverse_spreads_a_person_over_sources() -> None:
    def row(source: str, frame: int, side: float) -> dict:
        r = {"source": source, "frame_index": frame, "timestamp_s": frame / 10,
             "x1": 0.0, "y1": 0.0, "x2": side, "y2": side, "det_score": 0.99}
        r.update({f"p_{e}": 1.0 if e == "neutral" else 0.0 for e in EXPRESSIONS})
        return r

    # one expression throughout; a.mp4's frame 0 is the largest face. The same timestamps in
    # both videos mean nothing: b.mp4's faces count as far from a.mp4's as a.mp4's two ends.
    rows = [row("a.mp4", f, 80.0 if f == 0 else 70.0) for f in range(10)]
    rows += [row("b.mp4", f, 70.0) for f in range(10)]
    picks = pick_diverse(rows, 3)
    assert picks[:2] == [0, 9] and rows[picks[2]]["source"] == "b.mp4"
    # one source: as before (the best, then the furthest in time)
    assert pick_diverse(rows[:10], 2) == [0, 9]
