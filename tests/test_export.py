"""`cage export`: annotations -> face crops + labels CSVs + manifest; review round trip;
the exported folder read back by `cage train` / `cage evaluate`."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, INTERVIEW, MULTI, SINGLE, cage
from PIL import Image, ImageOps

from cage_cli import DEFAULT_MODEL
from cage_cli.annotation.io.read import read_annotations
from cage_cli.export.prelabel import LABEL_COLUMNS, read_manifest
from cage_cli.schema import EXPRESSIONS, PROB_COLUMNS
from cage_cli.train.datasets import load_data

MAX_FRAMES = 6


@pytest.fixture(scope="module")
def ann(tmp_path_factory) -> Path:
    """Annotations of 2 photos, a photo stored sideways with an EXIF rotation, and the first
    MAX_FRAMES frames of both videos (links to the shared media; they stay untouched)."""
    media = tmp_path_factory.mktemp("media")
    for p in (SINGLE, MULTI, CLIP, INTERVIEW):
        (media / p.name).symlink_to(p)
    # Upright: the face on top of a tall canvas. Stored turned 90 degrees, EXIF 6 turns it back.
    face = Image.open(SINGLE).convert("RGB")
    upright = Image.new("RGB", (face.width, face.height + 220), (40, 90, 160))
    upright.paste(face, (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(media / "rotated.jpg", quality=95,
                                                      exif=exif.tobytes())
    out = tmp_path_factory.mktemp("ann") / "faces.parquet"
    r = cage("annotate", media, "-o", out, "--max-frames", MAX_FRAMES)
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def rows(ann: Path) -> list[dict]:
    return read_annotations(ann).to_pylist()


def export(ann: Path, out: Path, *args) -> None:
    r = cage("export", ann, "-o", out, "-q", *args)
    assert r.exit_code == 0, r.stderr


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def conf(row: dict) -> float:
    return max(row[c] for c in PROB_COLUMNS if row[c] is not None)


def source_frame(row: dict) -> np.ndarray:
    """The frame a row was annotated on, decoded independently of cage_cli."""
    if row["media"] == "image":
        with Image.open(row["source"]) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    import decord

    vr = decord.VideoReader(row["source"], ctx=decord.cpu(0))
    return vr.get_batch([row["frame_index"]]).asnumpy()[0]


def recrop(frame: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Square around the box centre, side = longer side * (1 + 2 margin), black outside."""
    x1, y1, x2, y2 = box
    side = int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin)))
    left = int(round((x1 + x2) / 2 - side / 2))
    top = int(round((y1 + y2) / 2 - side / 2))
    h, w = frame.shape[:2]
    padded = np.zeros((h + 2 * side, w + 2 * side, 3), np.uint8)
    padded[side:side + h, side:side + w] = frame
    cut = padded[top + side:top + 2 * side, left + side:left + 2 * side]
    return np.asarray(Image.fromarray(cut).resize((size, size), Image.Resampling.BICUBIC))


def test_crop_count_sizes_layout(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    export(ann, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json", "images", "labels.csv", "manifest.csv"]
    _, manifest = read_manifest(out)
    labels = read_csv(out / "labels.csv")
    assert len(manifest) == len(labels) == len(rows) > 40
    assert list(labels[0]) == list(LABEL_COLUMNS)
    crops = sorted((out / "images").iterdir())
    assert len(crops) == len(rows)
    for p in crops:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"
    by_row = {r["annotation_row"]: r for r in manifest}
    for lab in labels:
        m = next(r for r in manifest if r["image"] == lab["image"])
        a = rows[m["annotation_row"]]
        assert (out / lab["image"]).is_file()  # relative to the CSV's folder
        assert lab["expression_name"] == a["label"] == EXPRESSIONS[int(lab["expression"])]
        assert lab["label_source"] == "machine" and lab["model"] == a["model"]
        assert abs(float(lab["confidence"]) - conf(a)) < 1e-5
        assert abs(float(lab["valence"]) - a["valence"]) < 1e-5
        assert abs(float(lab["arousal"]) - a["arousal"]) < 1e-5
        for c in PROB_COLUMNS:
            assert (lab[c] == "") == (a[c] is None)
        assert lab["source"] == a["source"] and int(lab["frame_index"]) == a["frame_index"]
    assert set(by_row) == set(range(len(rows)))
    info = json.loads((out / "export.json").read_text())
    assert info["counts"]["exported"] == len(rows) and info["errors"] == []
    # The sources' folder got nothing new.
    assert sorted(p.name for p in Path(rows[0]["source"]).parent.iterdir()) == sorted(
        ["interview.mp4", "multiface.jpg", "rotated.jpg", "short_clip.mp4", "single_face.jpg"])


def test_every_crop_matches_its_box(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    export(ann, out, "--image-format", "png", "--size", "96", "--margin", "0.3")
    _, manifest = read_manifest(out)
    frames: dict[tuple[str, int], np.ndarray] = {}
    media = Counter()
    for m in manifest:
        a = rows[m["annotation_row"]]
        assert (m["source"], m["frame_index"], m["face_index"]) == (
            a["source"], a["frame_index"], a["face_index"])
        assert (m["x1"], m["y1"], m["x2"], m["y2"]) == (a["x1"], a["y1"], a["x2"], a["y2"])
        key = (a["source"], a["frame_index"])
        if key not in frames:
            frames[key] = source_frame(a)
        frame = frames[key]
        assert frame.shape[:2] == (a["frame_height"], a["frame_width"])
        box = (a["x1"], a["y1"], a["x2"], a["y2"])
        crop = np.asarray(Image.open(out / m["image"]))
        assert crop.shape == (96, 96, 3)
        expect = recrop(frame, box, 0.3, 96)
        assert np.abs(crop.astype(int) - expect).max() <= 1, m["image"]
        # The check has teeth: the same crop cut 15% of the box further right differs.
        dx = 0.15 * (box[2] - box[0])
        shifted = recrop(frame, (box[0] + dx, box[1], box[2] + dx, box[3]), 0.3, 96)
        assert np.abs(crop.astype(int) - shifted).mean() > 3
        media[a["media"]] += 1
    assert media["image"] >= 8 and media["video"] >= 2 * MAX_FRAMES
    # The EXIF-rotated photo: boxes are in upright pixels, crops cut from the upright image.
    rot = [m for m in manifest if m["source"].endswith("rotated.jpg")]
    assert len(rot) == 1 and (rot[0]["frame_width"], rot[0]["frame_height"]) == (381, 604)


def test_jpeg_crops_match_boxes(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    export(ann, out)  # defaults: JPEG, 224, margin 0.2
    _, manifest = read_manifest(out)
    for m in manifest:
        a = rows[m["annotation_row"]]
        if a["media"] != "image":
            continue
        expect = recrop(source_frame(a), (a["x1"], a["y1"], a["x2"], a["y2"]), 0.2, 224)
        crop = np.asarray(Image.open(out / m["image"]))
        assert np.abs(crop.astype(int) - expect).mean() < 3, m["image"]


def test_splits_grouped_by_source_and_deterministic(ann: Path, rows: list[dict],
                                                    tmp_path: Path) -> None:
    args = ("--split", "train=0.6,val=0.2,test=0.2", "--seed", "3")
    export(ann, tmp_path / "a", *args)
    export(ann, tmp_path / "b", *args, "--manifest-format", "parquet")
    _, ma = read_manifest(tmp_path / "a")
    _, mb = read_manifest(tmp_path / "b")
    assert (tmp_path / "b" / "manifest.parquet").is_file()
    assert [(m["image"], m["split"]) for m in ma] == [(m["image"], m["split"]) for m in mb]
    split_of: dict[str, set[str]] = {}
    for m in ma:
        split_of.setdefault(m["source"], set()).add(m["split"])
    assert all(len(s) == 1 for s in split_of.values()), split_of
    assert len(split_of) == 5
    seen = []
    for s in ("train", "val", "test"):
        part = read_csv(tmp_path / "a" / f"{s}.csv")
        assert part, f"{s}.csv is empty"
        assert {p["image"] for p in part} == {m["image"] for m in ma if m["split"] == s}
        seen += [p["image"] for p in part]
    assert sorted(seen) == sorted(m["image"] for m in ma) and len(seen) == len(rows)
    assert not (tmp_path / "a" / "labels.csv").exists()


def test_per_class_balanced(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    have = Counter(r["label"] for r in rows)
    n = 3
    assert sum(1 for v in have.values() if v > n) >= 2  # the test means something
    export(ann, tmp_path / "a", "--per-class", n, "--seed", "7")
    export(ann, tmp_path / "b", "--per-class", n, "--seed", "7")
    la = read_csv(tmp_path / "a" / "labels.csv")
    assert Counter(r["expression_name"] for r in la) == {k: min(v, n) for k, v in have.items()}
    assert la == read_csv(tmp_path / "b" / "labels.csv")


def test_selection_filters(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    p = 0.5
    export(ann, tmp_path / "hi", "--min-confidence", p)
    export(ann, tmp_path / "lo", "--max-confidence", p)
    hi = read_csv(tmp_path / "hi" / "labels.csv")
    lo = read_csv(tmp_path / "lo" / "labels.csv")
    assert len(hi) == sum(conf(r) >= p for r in rows) > 0
    assert len(lo) == sum(conf(r) <= p for r in rows) > 0
    assert all(float(r["confidence"]) >= p for r in hi)
    assert all(float(r["confidence"]) <= p for r in lo)

    top = Counter(r["label"] for r in rows).most_common(2)
    wanted = f"{top[0][0]},{top[1][0]}"
    export(ann, tmp_path / "cls", "--classes", wanted)
    got = Counter(r["expression_name"] for r in read_csv(tmp_path / "cls" / "labels.csv"))
    assert got == dict(top)

    export(ann, tmp_path / "big", "--min-face", 60, "--min-det-score", 0.99)
    big = read_csv(tmp_path / "big" / "labels.csv")
    want = [r for r in rows if min(r["x2"] - r["x1"], r["y2"] - r["y1"]) >= 60
            and r["det_score"] >= 0.99]
    assert 0 < len(big) == len(want) < len(rows)

    export(ann, tmp_path / "k", "--every-k-frames", 3)
    export(ann, tmp_path / "gap", "--min-gap-s", 0.1)
    for name, step in (("k", 3), ("gap", 3)):  # 0.1 s = 2.5 frames at 24.7-25 fps
        lab = read_csv(tmp_path / name / "labels.csv")
        for video in (CLIP.name, INTERVIEW.name):
            kept = sorted({int(r["frame_index"]) for r in lab if r["source"].endswith(video)})
            annotated = sorted({r["frame_index"] for r in rows if r["source"].endswith(video)})
            assert kept and all(b - a >= step for a, b in zip(kept, kept[1:], strict=False))
            assert len(kept) < len(annotated)
        photos = [r for r in lab if not r["source"].endswith(".mp4")]
        assert len(photos) == sum(r["media"] == "image" for r in rows)  # photos untouched


def test_review_round_trip(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    out, sheet = tmp_path / "ds", tmp_path / "review.csv"
    export(ann, out, "--max-confidence", 0.6, "--split", "train=0.5,test=0.5",
           "--review-csv", sheet)
    review = read_csv(sheet)
    before = {r["image"]: r for s in ("train", "test") for r in read_csv(out / f"{s}.csv")}
    assert [r["image"] for r in review] == [m["image"] for m in read_manifest(out)[1]]
    assert len(review) == len(before) >= 4
    for r in review:
        assert Path(r["crop"]).is_file() and r["reviewed_label"] == ""
        assert r["machine_label"] == before[r["image"]]["expression_name"]
        assert float(r["confidence"]) <= 0.6
    # A human relabels one face, rejects one, confirms one, leaves the rest.
    relabel, reject, confirm = review[0], review[1], review[2]
    new = next(e for e in ("surprise", "disgust") if e != relabel["machine_label"])
    relabel["reviewed_label"], reject["reviewed_label"], confirm["reviewed_label"] = (
        new.upper(), "reject", "ok")
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(review[0]))
        w.writeheader()
        w.writerows(review)
    for _ in range(2):  # applying the same sheet twice gives the same dataset
        r = cage("export", "--apply-review", sheet, out)
        assert r.exit_code == 0, r.stderr
        after = {r["image"]: r for s in ("train", "test") for r in read_csv(out / f"{s}.csv")}
        assert set(after) == set(before) - {reject["image"]}
        a = after[relabel["image"]]
        assert a["expression_name"] == new and int(a["expression"]) == EXPRESSIONS.index(new)
        assert a["label_source"] == "human"
        c = after[confirm["image"]]
        assert c["label_source"] == "human" and c["expression"] == before[c["image"]]["expression"]
        untouched = [k for k in after if k not in (relabel["image"], confirm["image"])]
        assert all(after[k] == before[k] for k in untouched)
    assert "1 relabelled, 1 confirmed, 1 rejected (as before: nothing changed)" in " ".join(
        r.stderr.split())  # the second time
    man = {m["image"]: m for m in read_manifest(out)[1]}
    assert man[reject["image"]]["rejected"] and (out / reject["image"]).is_file()
    assert man[relabel["image"]]["machine_label"] == relabel["machine_label"]
    assert len(json.loads((out / "export.json").read_text())["reviews"]) == 2
    # A typo is refused with the line number, and nothing changes.
    snapshot = (out / "train.csv").read_text(), (out / "test.csv").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,reviewed_label\n{review[3]['image']},hapy\n")
    r = cage("export", "--apply-review", bad, out)
    assert r.exit_code == 2 and "bad.csv:2" in r.stderr and "hapy" in r.stderr
    assert ((out / "train.csv").read_text(), (out / "test.csv").read_text()) == snapshot


def test_empty_splits_are_named_by_export_train_and_evaluate(ann: Path, rows: list[dict],
                                                            tmp_path: Path) -> None:
    """Seven splits for five sources: some come out empty. export warns (even with -q) and
    names them; train and evaluate say which split is empty and why, instead of a bare
    'no usable samples'."""
    out = tmp_path / "ds"
    names = [f"s{i}" for i in range(7)]
    r = cage("export", ann, "-o", out, "-q", "--split", ",".join(f"{n}=1" for n in names))
    assert r.exit_code == 0, r.stderr
    sizes = {n: len(read_csv(out / f"{n}.csv")) for n in names}
    empty = [n for n in names if sizes[n] == 0]
    full = [n for n in names if sizes[n]]
    assert len(full) == len({row["source"] for row in rows}) == 5 and len(empty) == 2
    [warning] = r.stderr.splitlines()
    assert warning.startswith(f"cage: warning: {empty[0]}.csv, {empty[1]}.csv got no faces: "
                              f"the {sum(sizes.values())} faces come from 5 sources")
    r = cage("train", out / f"{full[0]}.csv", "--val", out / f"{empty[0]}.csv", "-o",
             tmp_path / "run", "--backbone", "resnet18", "--input-size", 64, "--workers", 0)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"cage: error: validation data (--val): {out / empty[0]}.csv: "
                               f"no usable samples (`cage export` left the {empty[0]} split "
                               "empty: its")
    r = cage("evaluate", out / f"{empty[1]}.csv", "--model", "fer-mini-xception")
    assert r.exit_code == 2 and f"left the {empty[1]} split empty" in r.stderr
    # A split emptied by review says so.
    sheet = tmp_path / "review.csv"
    sheet.write_text("image,reviewed_label\n" + "".join(
        f"{row['image']},reject\n" for row in read_csv(out / f"{full[0]}.csv")))
    assert cage("export", "--apply-review", sheet, out).exit_code == 0
    r = cage("train", out / f"{full[0]}.csv", "-o", tmp_path / "run2", "--workers", 0)
    assert r.exit_code == 2 and r.stderr.startswith("cage: error: training data: ")
    assert f"every face of the {full[0]} split was rejected in review" in r.stderr


def test_missing_and_unreadable_sources_are_skipped(ann: Path, rows: list[dict],
                                                    tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    broken = tmp_path / "src" / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    table = pq.read_table(ann)
    src = table.column("source").to_pylist()
    gone = str(tmp_path / "gone" / "single_face.jpg")
    src = [gone if s.endswith("single_face.jpg") else str(broken) if s.endswith(CLIP.name)
           else s for s in src]
    table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(src))
    edited = tmp_path / "edited.parquet"
    pq.write_table(table, edited)
    r = cage("export", edited, "-o", tmp_path / "ds")
    assert r.exit_code == 1
    err = " ".join(r.stderr.split())
    assert f"skipped {gone}" in err and f"skipped {broken}" in err
    labels = read_csv(tmp_path / "ds" / "labels.csv")
    ok = [s for s in src if s not in (gone, str(broken))]
    assert len(labels) == len(ok) > 0
    info = json.loads((tmp_path / "ds" / "export.json").read_text())
    assert sorted(e["source"] for e in info["errors"]) == sorted([gone, str(broken)])


def test_output_safety(ann: Path, rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    export(ann, out, "--per-class", 1)
    r = cage("export", ann, "-o", out)
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    export(ann, out, "--per-class", 2, "--overwrite")
    assert len(read_csv(out / "labels.csv")) > len(Counter(r["label"] for r in rows))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = cage("export", ann, "-o", other, "--overwrite")
    assert r.exit_code == 2 and "not a `cage export` dataset" in r.stderr
    assert (other / "keep.txt").read_text() == "mine"
    media = Path(rows[0]["source"]).parent
    r = cage("export", ann, "-o", media / "crops")
    assert r.exit_code == 2 and "sources' folders" in r.stderr
    assert not (media / "crops").exists()
    for bad, msg in ((("--split", "train=0.8,val"), "--split"),
                     (("--classes", "happy,glee"), "glee"),
                     (("--min-confidence", "0.9", "--max-confidence", "0.5"), "nothing"),
                     (("--min-face", "100000"), "no faces to export")):
        r = cage("export", ann, "-o", tmp_path / "x", *bad)
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_train_and_evaluate_read_the_export(ann: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    export(ann, out, "--split", "train=0.6,val=0.2,test=0.2", "--seed", "3")
    run = tmp_path / "run"
    r = cage("train", out / "train.csv", "--val", out / "val.csv", "-o", run, "--max-steps", 1,
             "--batch-size", 4, "--backbone", "resnet18", "--input-size", 64, "--no-augment",
             "--workers", 0, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (run / "last.pt").is_file()
    history = (run / "metrics.csv").read_text().splitlines()
    assert len(history) == 2  # header + the one step's epoch
    report = tmp_path / "eval.json"
    r = cage("evaluate", out / "test.csv", "--weights", run / "last.pt", "--device", "cpu",
             "--json", report)
    assert r.exit_code == 0, r.stderr
    result = json.loads(report.read_text())
    n = len(read_csv(out / "test.csv"))
    assert result["n_images"] == n > 0 and result["classification"]["n"] == n
    assert os.path.samefile(result["data"], out / "test.csv")


def test_evaluate_an_export_without_model_uses_the_default(ann: Path, tmp_path: Path) -> None:
    """`cage export` without -o writes ANNOTATIONS_dataset/; `cage evaluate` without --model
    runs the default model on it."""
    copy = tmp_path / "faces.parquet"
    copy.write_bytes(ann.read_bytes())
    r = cage("export", copy, "-q")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "faces_dataset"
    report = tmp_path / "eval.json"
    r = cage("evaluate", out / "labels.csv", "--device", "cpu", "--json", report)
    assert r.exit_code == 0, r.stderr
    assert f"evaluating the default model, {DEFAULT_MODEL}" in r.stderr
    assert r.stdout.startswith(f"{DEFAULT_MODEL} on ")
    result = json.loads(report.read_text())
    n = len(read_csv(out / "labels.csv"))
    assert result["model"] == DEFAULT_MODEL and result["n_images"] == n > 0
    # The labels are this model's own, made on the full frame: most crops get them again
    # (0.73 when written).
    assert result["classification"]["accuracy"] > 0.5



def test_train_and_evaluate_read_the_manifest_as_crops(ann: Path, tmp_path: Path) -> None:
    """Issue 27.1: the manifest's x1..y2 are boxes in the source frames; evaluate and train
    read its crops as the faces (all splits together, rejected rows left out), as the labels
    CSVs are read, instead of cutting source boxes out of the crops (a crash before)."""
    out = tmp_path / "ds"
    export(ann, out, "--split", "train=0.5,test=0.5", "--seed", "1")
    reports = {}
    for name in ("manifest.csv", "train.csv", "test.csv"):
        reports[name] = tmp_path / f"{name}.json"
        r = cage("evaluate", out / name, "--model", "fer-mini-xception", "--device", "cpu",
                 "--json", reports[name], "--predictions", tmp_path / f"{name}.pred.csv")
        assert r.exit_code == 0, r.stderr
    result = json.loads(reports["manifest.csv"].read_text())
    assert result["crop"] == "whole_image"
    assert any("is a `cage export` manifest" in n and "(test, train)" in n
               for n in result["notes"])
    splits = [read_csv(tmp_path / f"{s}.pred.csv") for s in ("train.csv", "test.csv")]
    whole = read_csv(tmp_path / "manifest.csv.pred.csv")
    assert sorted(whole, key=lambda r: r["path"]) == sorted(
        (r for part in splits for r in part), key=lambda r: r["path"])  # same crops, outputs
    assert result["n_images"] == len(read_csv(out / "train.csv")) + len(read_csv(out / "test.csv"))
    # A face rejected in review is left out of the manifest's faces too.
    sheet = tmp_path / "review.csv"
    rejected = read_csv(out / "test.csv")[0]["image"]
    sheet.write_text(f"image,reviewed_label\n{rejected},reject\n")
    assert cage("export", "--apply-review", sheet, out).exit_code == 0
    after = load_data(out / "manifest.csv")
    assert len(after) == result["n_images"] - 1 and "1 rows rejected in review left out" in \
        after.notes and str(out / rejected) not in {s.path for s in after.samples}
    r = cage("train", out / "manifest.csv", "-o", tmp_path / "run", "--max-steps", 1,
             "--batch-size", 4, "--backbone", "resnet18", "--input-size", 64, "--no-augment",
             "--workers", 0, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.stderr
    (out / "manifest.parquet").write_bytes(b"")
    r = cage("evaluate", out / "manifest.parquet", "--model", "fer-mini-xception")
    assert r.exit_code == 2 and "pass the export's labels CSV" in r.stderr
    assert f"{out / 'train.csv'}" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_box_outside_its_image_is_a_row_error(ann: Path, tmp_path: Path) -> None:
    """Issue 27.1: a CSV whose x1..y2 do not fit their image (here the export's source-frame
    boxes against its crops) names each such row and leaves it out; the run goes on."""
    out = tmp_path / "ds"
    export(ann, out)
    manifest = read_csv(out / "manifest.csv")
    labels = tmp_path / "boxes.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "expression", "x1", "y1", "x2", "y2"])
        for i, m in enumerate(manifest):
            image = out / m["image"]
            with Image.open(image) as im:
                side = im.width
            box = ([side * 0.2, side * 0.2, side * 0.8, side * 0.8] if i < 2  # fits
                   else [side + 10, 5, side + 90, 80] if i == 2  # right of the image
                   else [m["x1"], m["y1"], m["x2"], m["y2"]])
            w.writerow([image, m["expression"], *box])
    outside = [i for i, m in enumerate(manifest) if i == 2 or (
        i >= 2 and (float(m["x1"]) >= side or float(m["y1"]) >= side))]
    assert len(outside) >= 3
    report = tmp_path / "eval.json"
    r = cage("evaluate", labels, "--model", "fer-mini-xception", "--device", "cpu",
             "--json", report)
    assert r.exit_code == 0, r.stderr
    result = json.loads(report.read_text())
    assert result["n_images"] == len(manifest) - len(outside) and result["crop"] == "boxes"
    third = out / manifest[2]["image"]
    assert (f"{labels}:4: face box ({side + 10:g}, 5, {side + 90:g}, 80) lies outside the "
            f"{side} x {side} image of {third}; row left out") in result["notes"]
    # Nothing fits: one line, exit 2.
    with open(labels, "w", newline="") as f:
        f.write(f"image,expression,x1,y1,x2,y2\n{third},1,300,300,200,400\n")
    r = cage("evaluate", labels, "--model", "fer-mini-xception")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no usable samples" in r.stderr and "is empty (x2 <= x1 or y2 <= y1)" in r.stderr
