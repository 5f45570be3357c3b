"""Crash-safe runs: kill at any moment, resume, lose or duplicate nothing; shards; bad input."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, INTERVIEW, MEDIA, MULTI, NOFACE, SINGLE, cage, read
from PIL import Image

KEY = ["source", "frame_index", "face_index"]
# Short runs: small photos, one portrait and the two videos, a few frames each.
SAMPLING = ["--max-frames", "4", "--every", "3"]
# Small groups and a part per input, so that an interrupted run has committed some work.
# (The reference run uses the default batching: rows must not depend on it.)
STEPWISE = ["--frames-per-batch", "2", "--part-seconds", "0"]


def make_media(folder: Path) -> Path:
    """18 inputs: the small photos, a portrait, both videos, and more names for the photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in (SINGLE, MULTI, NOFACE, MEDIA / "portrait_kate_siegel.jpg", CLIP, INTERVIEW):
        (folder / p.name).symlink_to(p)
    for i in range(12):
        (folder / f"copy_{i}_{(SINGLE, NOFACE)[i % 2].name}").symlink_to((SINGLE, NOFACE)[i % 2])
    return folder


def run_cli(*args: str | Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cage_cli", "annotate", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def signal_after_first_part(proc: subprocess.Popen, folder: Path, sig: int) -> str:
    """Wait until the run has committed a part file, send ``sig``; return its stderr."""
    deadline = time.monotonic() + 300
    while not list(folder.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    return proc.communicate(timeout=120)[1]


def rows_by_key(table: pa.Table) -> dict[tuple, dict]:
    rows = table.to_pylist()
    keyed = {tuple(r[k] for k in KEY): r for r in rows}
    assert len(keyed) == len(rows), "duplicate rows"
    return keyed


def assert_same_rows(got_table: pa.Table, want_table: pa.Table) -> None:
    """Same faces, boxes, landmarks, labels, probabilities and valence/arousal, exactly (a
    face's values do not depend on how it was batched: ExpressionModel.predict)."""
    got, want = rows_by_key(got_table), rows_by_key(want_table)
    assert got.keys() == want.keys()
    for k, row in want.items():
        for col, value in row.items():
            assert got[k][col] == value, (k, col)


def read_folder(folder: Path) -> pa.Table:
    parts = sorted(folder.glob("*.parquet"))
    for p in parts:  # every file in the output opens
        pq.read_table(p)
    return pads.dataset(parts, format="parquet").to_table() if parts else None


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return make_media(tmp_path_factory.mktemp("media") / "in")


@pytest.fixture(scope="module")
def reference(media: Path, tmp_path_factory) -> pa.Table:
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    r = cage("annotate", media, "-o", out, *SAMPLING)
    assert r.exit_code == 0, r.stderr
    table = read(out)
    assert table.num_rows > 20
    return table


def test_sigkill_at_random_moments_then_resume(media: Path, reference: pa.Table,
                                               tmp_path: Path) -> None:
    out = tmp_path / "out_dir"
    rng = random.Random(7)
    killed_mid_run = 0  # kills while the run was working
    for _ in range(10):
        before = len(list(out.glob("part-*.parquet")))
        proc = run_cli(media, "-o", f"{out}/", *SAMPLING, "--resume", *STEPWISE)
        # Wait until this run has committed something (or ended), then kill it at a random
        # moment of the work that follows: mid-decode, mid-model, mid-write or mid-rename.
        deadline = time.monotonic() + 300
        while (len(list(out.glob("part-*.parquet"))) == before and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.2))
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
        if finished:
            assert proc.returncode == 0, proc.stderr.read()
        killed_mid_run += not finished
        rows_by_key(read_folder(out))  # every file opens; no duplicates after any kill
    assert killed_mid_run >= 3  # the kills really interrupted work in progress
    proc = run_cli(media, "-o", f"{out}/", *SAMPLING, "--resume", *STEPWISE)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert_same_rows(read_folder(out), reference)


def test_sigint_exits_130_and_resumes(media: Path, reference: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "faces.parquet"
    partial = tmp_path / "faces.parquet.cage-partial"
    proc = run_cli(media, "-o", out, *SAMPLING, *STEPWISE)
    stderr = signal_after_first_part(proc, partial, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists()
    done = read_folder(partial)
    assert done.num_rows > 0
    rows_by_key(done)
    # Resuming with other settings is refused ...
    r = cage("annotate", media, "-o", out, *SAMPLING, "--resume", "--det-threshold", "0.8")
    assert r.exit_code == 2 and "other settings" in r.stderr and "threshold" in r.stderr
    # ... and without --resume the leftover is not silently replaced.
    r = cage("annotate", media, "-o", out, *SAMPLING)
    assert r.exit_code == 2 and "--resume" in r.stderr
    r = cage("annotate", media, "-o", out, *SAMPLING, "--resume")
    assert r.exit_code == 0, r.stderr
    assert not partial.exists()
    assert_same_rows(read(out), reference)


def test_sigterm_exits_143(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = run_cli(media, "-o", f"{out}/", *SAMPLING, *STEPWISE)
    stderr = signal_after_first_part(proc, out, signal.SIGTERM)
    assert proc.returncode == 143, stderr
    assert read_folder(out).num_rows > 0


def test_shards_cover_every_input_once(media: Path, reference: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    for i in range(3):
        r = cage("annotate", media, "-o", f"{out}/", *SAMPLING, "--shard", f"{i}/3")
        assert r.exit_code == 0, r.stderr
    assert len(list(out.glob("_cage_run-s*of3.json"))) == 3
    assert_same_rows(read_folder(out), reference)
    r = cage("annotate", media, "-o", tmp_path / "x.parquet", "--shard", "0/2")
    assert r.exit_code == 2 and "folder" in r.stderr
    r = cage("annotate", media, "-o", f"{out}/", "--shard", "3/3")
    assert r.exit_code == 2


def test_output_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = cage("annotate", SINGLE, "-o", blocker / "sub" / "out.parquet")
    assert r.exit_code == 2 and "cannot write" in r.stderr


def test_same_inputs_same_rows(media: Path, reference: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "again.parquet"
    assert cage("annotate", media, "-o", out, *SAMPLING).exit_code == 0
    # Boxes, track ids and labels exactly; probabilities to the classifier's batch rounding
    # (how frames fall into groups depends on timing; docs/performance.md).
    assert_same_rows(read(out), reference)


# --- bad input corpus, generated here ---------------------------------------------------


def _video(path: Path, frames: int, size: int = 256) -> None:
    img = np.asarray(Image.open(SINGLE).convert("RGB").resize((size, size)))
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            noisy = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus") / "in put ünï"
    d.mkdir()
    data = SINGLE.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("hello\n")
    (d / "text.mp4").write_text("hello\n")
    (d / "no_read.jpg").write_bytes(data)
    (d / "broken_link.jpg").symlink_to(d / "missing.jpg")
    (d / "loop_a.jpg").symlink_to(d / "loop_b.jpg")
    (d / "loop_b.jpg").symlink_to(d / "loop_a.jpg")
    (d / "loop_dir").symlink_to(d)
    (d / "smile ünïcødé.jpg").write_bytes(data)
    face = Image.open(SINGLE).convert("RGB")
    frames = [face, face.rotate(5), face.rotate(-5)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    big = Image.new("RGB", (12000, 8000), (90, 90, 90))
    big.paste(face.resize((face.width * 6, face.height * 6)), (5000, 3000))
    big.save(d / "huge.jpg", quality=80)
    _video(d / "good.mp4", 60)
    good = (d / "good.mp4").read_bytes()
    (d / "breaks_halfway.mp4").write_bytes(good[: len(good) // 2])
    (d / "no_frames.mp4").write_bytes(good[: len(good) // 50])
    return d


@pytest.fixture(scope="module")
def corpus_run(corpus: Path, tmp_path_factory):
    import builtins

    import cage_cli.annotation.io.decode as decode

    out = tmp_path_factory.mktemp("corpus_out") / "out.parquet"
    real_open = builtins.open

    def no_read(path, *a, **kw):  # tests run as root, who may read anything: simulate EACCES
        if str(path).endswith("no_read.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    decode.open = no_read
    try:
        t0 = time.monotonic()
        r = cage("annotate", corpus, "-o", out)
        seconds = time.monotonic() - t0
    finally:
        del decode.open
    reasons = {}
    for line in r.stderr.splitlines():
        if line.startswith("cage: skipped "):
            path, reason = line.removeprefix("cage: skipped ").split(": ", 1)
            reasons[Path(path).name] = reason
    return r, read(out), reasons, seconds


@pytest.mark.parametrize(("name", "reason"), [
    ("truncated.jpg", "truncated"),
    ("zero.jpg", "empty file"),
    ("text.jpg", "not a readable image"),
    ("text.mp4", "Invalid data"),
    ("no_read.jpg", "permission denied"),
    ("broken_link.jpg", "broken symlink"),
    ("loop_a.jpg", "symlink loop"),
    ("breaks_halfway.mp4", "breaks at frame"),
    ("no_frames.mp4", "no decodable frames"),
])
def test_bad_input_is_named_with_reason(corpus_run, name: str, reason: str) -> None:
    r, _, reasons, _ = corpus_run
    assert r.exit_code == 1
    assert name in reasons, r.stderr
    assert reason in reasons[name]
    assert "Traceback" not in r.stderr


def test_bad_input_keeps_every_good_row(corpus_run) -> None:
    r, table, reasons, seconds = corpus_run
    faces: dict[str, list] = {}
    for row in table.to_pylist():
        faces.setdefault(Path(row["source"]).name, []).append(row)
    assert len(faces["smile ünïcødé.jpg"]) == 1  # spaces and non-ASCII in the path
    assert len(faces["animated.gif"]) == 1  # first frame only
    huge = faces["huge.jpg"]  # detection ran on a downscaled copy; box in full pixels
    assert len(huge) == 1 and huge[0]["frame_width"] == 12000 and huge[0]["x1"] > 4900
    assert len({f["frame_index"] for f in faces["good.mp4"]}) == 60
    broken = sorted({f["frame_index"] for f in faces["breaks_halfway.mp4"]})
    assert broken and broken == list(range(len(broken))) and len(broken) < 60
    assert seconds < 600
    assert "cage: warning: " in r.stderr and "loop_dir: symlink loop" in r.stderr
    assert r.exit_code == 1  # the loop alone is only a warning; the bad files make it 1


def test_disk_full_keeps_finished_inputs(tmp_path: Path, monkeypatch) -> None:
    import errno

    from cage_cli.annotation.io.write import DatasetWriter

    real = DatasetWriter._flush_pending
    calls = {"n": 0}

    def flush_then_fill_disk(self) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self)

    monkeypatch.setattr(DatasetWriter, "_flush_pending", flush_then_fill_disk)
    out = tmp_path / "full.parquet"
    r = cage("annotate", MULTI, SINGLE, "-o", out, "--part-seconds", "0",
             "--frames-per-batch", "1")
    assert r.exit_code == 1
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
    kept = read_folder(tmp_path / "full.parquet.cage-partial")
    assert kept.num_rows == 6  # multiface.jpg, committed before the disk filled
    monkeypatch.undo()
    r = cage("annotate", MULTI, SINGLE, "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert read(out).num_rows == 7


def test_missing_input_path_is_a_usage_error(tmp_path: Path) -> None:
    r = cage("annotate", tmp_path / "nope", "-o", tmp_path / "x.parquet")
    assert r.exit_code == 2
    assert "nope: no such file or folder" in r.stderr and "nothing to do" in r.stderr
    r = cage("annotate", tmp_path / "nope", SINGLE, "-o", tmp_path / "y.parquet")
    assert r.exit_code == 1 and read(tmp_path / "y.parquet").num_rows == 1


def test_uri_output(tmp_path: Path) -> None:
    """-o file:///... goes through the generic pyarrow filesystem code
    (cage_cli.annotation.io.store: a file is written locally, then copied beside its final name and
    renamed): the rows of a plain path, nothing left beside them; a folder output resumes from its
    parts' footers; a bad URI is one line, exit 2."""
    args = [SINGLE, MULTI, CLIP, "--max-frames", "3"]
    plain = cage("annotate", *args, "-o", tmp_path / "plain.parquet")
    r = cage("annotate", *args, "-o", f"file://{tmp_path}/uri.parquet")
    assert plain.exit_code == r.exit_code == 0, r.stderr
    assert_same_rows(read(tmp_path / "uri.parquet"), read(tmp_path / "plain.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.parquet", "uri.parquet"]
    r = cage("annotate", *args, "-o", f"file://{tmp_path}/uri.parquet")
    assert r.exit_code == 2 and "exists; use --overwrite" in r.stderr

    out = f"file://{tmp_path}/ds/"
    assert cage("annotate", SINGLE, "-o", out, "--max-frames", "3").exit_code == 0
    r = cage("annotate", *args, "-o", out, "--resume")
    assert r.exit_code == 0 and re.search(r"files done earlier \(resumed\)\W+1\W", r.stderr)
    assert_same_rows(read_folder(tmp_path / "ds"), read(tmp_path / "plain.parquet"))
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "_cage_run-s0of1.json", "part-s0of1-00000.parquet", "part-s0of1-00001.parquet"]

    r = cage("annotate", SINGLE, "-o", "nope://bucket/out.parquet")
    assert r.exit_code == 2 and r.stderr.strip() == (
        "cage: error: cannot use output nope://bucket/out.parquet: Unrecognized filesystem "
        "type in URI: nope://bucket/out.parquet")
