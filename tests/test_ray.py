"""`cage annotate --ray` on a real local Ray (2 CPUs, started and shut down here): the same rows
as a local run, a killed worker, bad inputs, a killed driver then --resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import CLIP, INTERVIEW, MEDIA, SINGLE, cage, read
from test_runs import assert_same_rows, rows_by_key

from cage_cli.annotation.running.cluster import have_ray

needs_ray = pytest.mark.skipif(not have_ray(), reason="ray is not installed (pip install "
                                                      "'cage-cli[ray]')")
SAMPLING = ["--max-frames", "6"]  # every shared photo, a few frames of each video


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with 2 CPUs for this module; the in-process runs reuse the connection,
    subprocesses connect by address."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()  # stops every Ray process this started


def kill_one(killed: list[int], task: str = "annotate_task", holding: Path | None = None) -> None:
    """SIGKILL a Ray worker 1 s into a ``task`` (the model is loaded, frames are in flight).
    With ``holding``, the worker whose task has that input open, at once: which of the tasks
    Ray starts first is not promised (on a busy machine it may be any)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = worker_pids(task, holding)
        if pids and holding is None:
            time.sleep(1.0)
            pids = [p for p in pids if p in worker_pids(task)]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.05)


def worker_pids(task: str = "annotate_task", holding: Path | None = None) -> list[int]:
    """Ray worker processes running a ``task`` now (Ray sets their process title); with
    ``holding``, only those that have that file open."""
    import psutil

    want = os.path.realpath(holding) if holding is not None else None
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if not (cmd and cmd[0].startswith(f"ray::{task}")):
            continue
        try:
            if want is None or any(f.path == want for f in p.open_files()):
                pids.append(p.pid)
        except psutil.Error:  # it ended meanwhile
            continue
    return pids


@needs_ray
def test_same_rows_as_local_run(ray_address: str, local: pa.Table, tmp_path: Path) -> None:
    """Through the Python API: the rows, their order, the metadata and the summary."""
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.running.cluster import RayOptions
    from cage_cli.annotation.running.pipeline import AnnotateOptions
    from cage_cli.annotation.running.runner import annotate_to

    options = AnnotateOptions(sampling=Sampling(max_frames=int(SAMPLING[1])))
    pieces = []
    out = tmp_path / "ray.parquet"
    s = annotate_to([str(MEDIA)], str(out), options, ray=RayOptions(), on_result=pieces.append,
                    log=lambda _: None)
    assert s.exit_code == 0 and s.files_ok == 9 and s.files_skipped == 1  # README.md
    table = read(out)
    assert_same_rows(table, local)
    assert table.column("source").to_pylist() == local.column("source").to_pylist()  # order
    assert _same_run_info(table, local)  # model, weights, options, versions
    assert not (tmp_path / "ray.parquet.cage-partial").exists()
    # The progress bar's feed: frames and faces add up to the rows, one done piece per input.
    assert s.faces == sum(p.faces for p in pieces) == local.num_rows
    assert s.frames == sum(p.frames for p in pieces) == 7 + 2 * 6
    assert sorted(p.source for p in pieces if p.done) == sorted(
        str(p) for p in MEDIA.iterdir() if p.suffix != ".md")

    r = cage("annotate", SINGLE, "-o", "-", "--ray")
    assert r.exit_code == 2 and "--ray needs a file or folder output" in r.stderr


def _same_run_info(a: pa.Table, b: pa.Table) -> bool:
    """Same run metadata but the start and end times."""
    import json

    ma, mb = (json.loads(t.schema.metadata[b"cage.run"]) for t in (a, b))
    for m in (ma, mb):
        for k in ("started", "finished"):
            m.pop(k)
    return ma == mb


@needs_ray
def test_worker_killed_mid_input(ray_address: str, local: pa.Table, tmp_path: Path) -> None:
    """SIGKILL a worker while it runs a task: Ray retries the task, the retry's part replaces
    anything the dead attempt left, no row is lost or doubled."""
    from cage_cli.annotation.io.write import read_done

    killed: list[int] = []

    killer = threading.Thread(target=kill_one, args=(killed,))
    killer.start()
    out = tmp_path / "ds"
    r = cage("annotate", MEDIA, "-o", f"{out}/", *SAMPLING, "--ray-address", ray_address)
    killer.join()
    assert killed, "no worker was running to kill"
    assert r.exit_code == 0, r.stderr
    # A folder output keeps one part per task (each video alone; here each photo too: 7
    # photos over 2 CPUs), each recording the input it finished.
    parts = sorted(out.glob("part-ray*.parquet"))
    done = read_done(out)
    assert set(done.sources) == {str(p) for p in MEDIA.iterdir() if p.suffix != ".md"}
    assert len(parts) == len(done.sources) == 9 and (out / "_cage_run-ray.json").exists()
    assert not list(out.glob(".*.tmp"))
    assert_same_rows(pa.concat_tables(pq.read_table(p) for p in parts), local)


@needs_ray
def test_task_that_keeps_dying_is_a_failed_input(ray_address: str, tmp_path: Path) -> None:
    """With no retries left, the inputs of a killed task are failed (exit 1) with a one-line
    reason, not lost silently; the other inputs' rows are kept, and --resume completes the
    run with a local run's rows."""
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.write import read_done
    from cage_cli.annotation.running.cluster import RayOptions
    from cage_cli.annotation.running.pipeline import AnnotateOptions
    from cage_cli.annotation.running.runner import annotate_to

    options = AnnotateOptions(sampling=Sampling(max_frames=24))
    inputs, out = [str(INTERVIEW), str(SINGLE)], f"{tmp_path}/ds/"
    killed: list[int] = []
    killer = threading.Thread(target=kill_one, args=(killed, "annotate_task", INTERVIEW))
    killer.start()
    s = annotate_to(inputs, out, options, ray=RayOptions(max_retries=0), log=lambda _: None)
    killer.join()
    assert killed
    assert s.exit_code == 1 and s.files_failed == 1
    assert s.errors[0]["source"] == str(INTERVIEW)
    assert s.errors[0]["error"] == "Ray task failed after 0 retries: WorkerCrashedError"
    assert set(read_done(Path(out)).sources) == {str(SINGLE)}  # the finished input's rows
    # --resume does the rest: a local run's rows.
    s = annotate_to(inputs, out, options, ray=RayOptions(), resume=True, log=lambda _: None)
    assert s.exit_code == 0 and s.files_resumed == 1 and s.files_ok == 1
    annotate_to(inputs, str(tmp_path / "local.parquet"), options, log=lambda _: None)
    assert_same_rows(pa.concat_tables(pq.read_table(p) for p in Path(out).glob("part-*")),
                     read(tmp_path / "local.parquet"))


@needs_ray
def test_bad_inputs_same_errors_as_local(ray_address: str, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    clip = CLIP.read_bytes()
    (d / "truncated.mp4").write_bytes(clip[: len(clip) // 2])
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("hello\n")
    (d / "face.jpg").symlink_to(SINGLE)

    def run(*extra: str) -> tuple[int, set[str], pa.Table]:
        out = tmp_path / f"out{len(extra)}.parquet"
        r = cage("annotate", d, "-o", out, *extra)
        lines = {x for x in r.stderr.splitlines() if x.startswith("cage: skipped ")}
        assert "Traceback" not in r.stderr
        return r.exit_code, lines, read(out)

    code, errors, table = run()
    ray_code, ray_errors, ray_table = run("--ray")
    assert code == ray_code == 1
    assert len(errors) == 3 and ray_errors == errors
    assert_same_rows(ray_table, table)
    assert {Path(s).name for s in table["source"].to_pylist()} == {"face.jpg"}


def test_segments_cut_at_chunk_boundaries() -> None:
    from cage_cli.annotation.running.cluster import segments

    assert segments(30, 10, 5) == [(0, 10), (10, 20), (20, None)]
    assert segments(31, 10, 5) == [(0, 10), (10, 20), (20, 30), (30, None)]
    assert segments(23, 10, 4) == [(0, 8), (8, 16), (16, None)]  # multiples of 4
    assert segments(7, 3, 1) == [(0, 3), (3, 6), (6, None)]


def test_segment_rows_do_not_depend_on_the_cuts() -> None:
    """In-process, no Ray: a video's segments tracked in order (cluster._joined) give the
    whole run's rows, also when the cuts come from a wrong frame count (the driver reads it
    from the header): segments past the end are empty, the open-ended last one takes the
    rest. --keep-empty rows and --smooth values too."""
    from cage_cli.annotation.io.decode import Sampling, estimated_count
    from cage_cli.annotation.io.inputs import MediaFile
    from cage_cli.annotation.running.cluster import _joined, segments
    from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions
    from cage_cli.schema import SCHEMA

    options = AnnotateOptions(sampling=Sampling(max_frames=30), keep_empty=True, smooth=0.5)
    pipeline, clip = Pipeline(options, RunOptions(threads=1)), MediaFile(str(CLIP), "video")
    assert estimated_count(clip.path, options.sampling) == 30

    def table(results) -> pa.Table:
        return pa.Table.from_batches([r.rows for r in results if r.rows is not None], SCHEMA)

    whole = table(pipeline.run([clip]))
    assert whole.num_rows == 30
    for count in (12, 30, 50):  # too few, right, too many
        cuts = segments(count, 10, options.detect_every)
        parts = tuple(list(pipeline.run([clip], p)) for p in cuts)
        assert sum(r.frames for part in parts for r in part) == 30
        results = list(_joined(pipeline, clip, parts))
        assert results[-1].done and results[-1].error is None
        assert_same_rows(table(results), whole)


@needs_ray
@pytest.mark.parametrize("smooth", [None, 0.5])
def test_long_videos_in_segments(ray_address: str, tmp_path: Path,
                                 smooth: float | None) -> None:
    """Videos of 30 sampled frames with --ray-segment-frames 10: each is detected as 3
    segment tasks (seen running), then tracked whole; the rows, track ids and --smooth
    values equal a local run's. With --smooth a segment's worker is also killed: Ray
    retries the segment, nothing is lost or doubled."""
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import MediaFile
    from cage_cli.annotation.running.cluster import RayOptions, RayPipeline
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions

    options = AnnotateOptions(sampling=Sampling(max_frames=30))
    assert [len(RayPipeline(options, RunOptions(), RayOptions(segment_frames=10))._segments(
        MediaFile(str(p), "video"))) for p in (CLIP, INTERVIEW)] == [3, 3]
    args = [CLIP, INTERVIEW, "--max-frames", "30", *(["--smooth", str(smooth)] if smooth else [])]
    local_run = cage("annotate", *args, "-o", tmp_path / "local.parquet")
    local = read(tmp_path / "local.parquet")
    assert local_run.exit_code == 0 and len(set(local["track_id"].to_pylist())) > 3  # interview

    seen: set[int] = set()
    killed: list[int] = []
    running = threading.Event()

    def watch() -> None:
        while not running.is_set():
            seen.update(worker_pids("segment_task"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    killer = threading.Thread(target=kill_one, args=(killed, "segment_task"))
    if smooth:
        killer.start()
    out = tmp_path / "ray.parquet"
    try:
        r = cage("annotate", *args, "-o", out, "--ray", "--ray-segment-frames", "10")
    finally:
        running.set()
        watcher.join()
        if smooth:
            killer.join()
    assert seen, "no segment task ran"
    assert bool(killed) == bool(smooth)
    assert r.exit_code == 0, r.stderr
    # The summary (fed by the progress reports of the segments, then the commit task).
    assert summary_counts(r.stderr) == summary_counts(local_run.stderr) == {
        "files ok": 2, "frames": 60, "faces": local.num_rows}
    table = read(out)
    assert_same_rows(table, local)
    assert table.to_pydict()["track_id"] == local.to_pydict()["track_id"]  # and their order


def summary_counts(stderr: str) -> dict[str, int]:
    """The end summary's files ok, frames and faces."""
    found = re.findall(r"^\W*(files ok|frames|faces)\W+(\d+)\W*$", stderr, re.M)
    return {k: int(v) for k, v in found}


def start_driver(out: Path, address: str, *extra: str) -> subprocess.Popen:
    """`cage annotate --ray-address` in a process of its own; returns once it committed a
    part (or ended)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cage_cli", "annotate", str(MEDIA), "-o", str(out), *SAMPLING,
         "--ray-address", address, *extra], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".cage-partial")
    before = len(list(partial.glob("part-ray*.parquet")))
    deadline = time.monotonic() + 120
    while len(list(partial.glob("part-ray*.parquet"))) == before and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


@needs_ray
def test_driver_killed_then_resume(ray_address: str, local: pa.Table, tmp_path: Path) -> None:
    """SIGKILL the driver half-way, SIGTERM the resumed run (exit 143), resume again: the
    rows equal an uninterrupted run's."""
    out = tmp_path / "faces.parquet"
    partial = tmp_path / "faces.parquet.cage-partial"
    proc = start_driver(out, ray_address)
    assert proc.poll() is None, proc.stderr.read()
    proc.kill()
    proc.communicate()
    committed = pa.concat_tables(pq.read_table(p) for p in partial.glob("part-ray*.parquet"))
    assert 0 < committed.num_rows < local.num_rows  # really killed half-way
    rows_by_key(committed)

    proc = start_driver(out, ray_address, "--resume")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists()

    r = cage("annotate", MEDIA, "-o", out, *SAMPLING, "--ray", "--resume")
    assert r.exit_code == 0, r.stderr
    assert "resumed" in r.stderr
    assert not partial.exists()
    assert_same_rows(read(out), local)


@needs_ray
def test_classify_on_actors(ray_address: str, local: pa.Table, tmp_path: Path) -> None:
    """The GPU path (classification on a pool of Classifier actors), run with a CPU actor as
    there is no GPU here: tasks decode, detect, crop and track, the actor classifies every
    face (the tasks hold no network), the tasks build the rows: a local run's rows. Videos in
    segments too."""
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import discover
    from cage_cli.annotation.running.cluster import RayOptions, RayPipeline, drop_duplicates
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions

    options = AnnotateOptions(sampling=Sampling(max_frames=int(SAMPLING[1])))
    pipeline = RayPipeline(options, RunOptions(), RayOptions(classify_actors=True,
                                                            segment_frames=3))
    pieces = list(pipeline.run(discover([str(MEDIA)]).files, tmp_path, {}))
    assert [p.error for p in pieces if p.done] == [None] * 9
    assert_same_rows(pa.concat_tables(pq.read_table(p) for p in drop_duplicates(tmp_path)),
                     local)
    [stats] = pipeline.actor_stats  # one actor without GPUs
    assert stats["faces"] == local.num_rows and stats["calls"] <= stats["requests"]


def objects(fs, prefix: str) -> list[str]:  # noqa: ANN001 - a pyarrow FileSystem
    from pyarrow.fs import FileSelector

    return sorted(i.path for i in fs.get_file_info(FileSelector(prefix, recursive=True)))


@needs_ray
def test_s3_output(ray_address: str, local: pa.Table, s3, tmp_path: Path) -> None:  # noqa: ANN001
    """-o s3://... on a real S3 API served on 127.0.0.1 (moto): the workers write their parts
    into the bucket and the driver merges them into one object; a folder output resumes from
    the parts' footers there and the duplicate guard works on it; a missing bucket is one
    line, exit 2."""
    from cage_cli.annotation.io.store import UriPath
    from cage_cli.annotation.running.cluster import drop_duplicates

    uri, fs = s3
    inputs = [MEDIA / "single_face.jpg", MEDIA / "short_clip.mp4"]

    def want(paths: list[Path]) -> pa.Table:
        return local.filter(pc.is_in(local["source"], pa.array([str(p) for p in paths])))

    r = cage("annotate", *inputs, "-o", uri("run/faces.parquet"), *SAMPLING, "--ray")
    assert r.exit_code == 0, r.stderr
    assert objects(fs, "bkt/run") == ["bkt/run/faces.parquet"]  # the part folder is gone
    with fs.open_input_file("bkt/run/faces.parquet") as f:
        assert_same_rows(pq.read_table(f), want(inputs))

    r = cage("annotate", *inputs, "-o", uri("ds/"), *SAMPLING, "--ray")
    assert r.exit_code == 0, r.stderr
    more = [*inputs, MEDIA / "multiface.jpg"]
    # (this run classifies on a CPU actor: the CLI's switch for test_classify_on_actors' path)
    r = cage("annotate", *more, "-o", uri("ds/"), *SAMPLING, "--ray", "--resume",
             "--ray-gpu-actors")
    assert r.exit_code == 0 and summary_counts(r.stderr)["files ok"] == 1, r.stderr
    parts = [p for p in objects(fs, "bkt/ds") if "/part-ray" in p]
    assert len(parts) == 3 and "bkt/ds/_cage_run-ray.json" in objects(fs, "bkt/ds")
    # An attempt that outlived its driver: the same input in a second part.
    fs.copy_file(parts[0], "bkt/ds/part-ray0000000000000000-00000.parquet")
    kept = drop_duplicates(UriPath.from_uri(uri("ds/")))
    assert len(kept) == 3 and [p for p in objects(fs, "bkt/ds") if "/part-" in p] == sorted(
        p.path for p in kept)
    tables = []
    for p in kept:
        with fs.open_input_file(p.path) as f:
            tables.append(pq.read_table(f))
    assert_same_rows(pa.concat_tables(tables), want(more))

    r = cage("annotate", SINGLE, "-o", uri("x/").replace("@bkt/", "@nobucket/"), "--ray")
    assert r.exit_code == 2 and r.stderr.strip() == (
        "cage: error: cannot write to s3://nobucket/x: Bucket 'nobucket' not found. To create "
        "buckets, enable the allow_bucket_creation option.")


def test_without_ray_exits_2_with_the_install_line(tmp_path: Path) -> None:
    """Ray made unimportable in a fresh interpreter (as if not installed)."""
    code = ("import sys; sys.modules['ray'] = None; from cage_cli.cli import app; "
            "app(['annotate', sys.argv[1], '-o', sys.argv[2], '--ray'])")
    r = subprocess.run([sys.executable, "-c", code, str(SINGLE), str(tmp_path / "o.parquet")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "cage: error: --ray needs Ray: pip install 'cage-cli[ray]'"
    assert not (tmp_path / "o.parquet").exists()


@needs_ray
def test_progress_actor_gone(ray_address: str, local: pa.Table, tmp_path: Path) -> None:
    """The progress actor killed for good mid-run (as when its node is lost): the run goes
    on with a new one, every input done, a local run's rows."""
    import ray

    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import discover
    from cage_cli.annotation.running.cluster import RayOptions, RayPipeline, drop_duplicates
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions

    options = AnnotateOptions(sampling=Sampling(max_frames=int(SAMPLING[1])))
    pipeline = RayPipeline(options, RunOptions(), RayOptions())
    pieces, first = [], None
    for p in pipeline.run(discover([str(MEDIA)]).files, tmp_path, {}):
        pieces.append(p)
        if first is None:
            first = pipeline.progress
            ray.kill(first, no_restart=True)
    assert first is not None and pipeline.progress is not first  # replaced
    assert [p.error for p in pieces if p.done] == [None] * 9
    assert sum(p.faces for p in pieces) == local.num_rows
    assert_same_rows(pa.concat_tables(pq.read_table(p) for p in drop_duplicates(tmp_path)),
                     local)


@needs_ray
def test_classifier_actor_gone(ray_address: str) -> None:
    """A task's Classifier actors gone (killed, no restart): it classifies its crops itself,
    with the same model, as a task without actors: the same predictions."""
    import ray
    import torch

    from cage_cli.annotation.running.cluster import ActorModel, Classifier
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions
    from cage_cli.models import create_model

    options = AnnotateOptions()
    model = create_model(options.model, None, "cpu", "fp32")
    actor = ray.remote(Classifier).options(num_cpus=0).remote(
        options, RunOptions(threads=1, device="cpu"), 64)
    size = model.config.input_size
    crops = torch.randint(0, 256, (5, size, size, model.config.channels), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    want = model.predict(crops)
    on_actor = ActorModel(model.config, (actor,), (options.model, None))
    got = on_actor.predict(crops)
    assert on_actor._local is None  # noqa: SLF001 - the actor answered
    ray.kill(actor, no_restart=True)
    bypass = ActorModel(model.config, (actor,), (options.model, None))
    bypassed = bypass.predict(crops)
    assert bypass._local is not None  # noqa: SLF001 - classified in the task
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, atol=1e-5)
        np.testing.assert_allclose(bypassed[k], v, atol=1e-5)


def test_upload_temp_of_a_killed_writer_is_removed(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A writer killed during an upload to a URI output (a Ray worker, or a plain run)
    leaves its local copy in $TMPDIR; the next writer on the machine (the retried task, the
    next run) removes it, and never the file of a writer still alive."""
    import tempfile

    from cage_cli.annotation.io.store import UriPath
    from cage_cli.annotation.io.write import remove_stale_temps, temp_for

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    code = ("import os, signal, sys, tempfile; tempfile.tempdir = sys.argv[1]; "
            "from cage_cli.annotation.io.store import UriPath; "
            "from cage_cli.annotation.io.write import temp_for; "
            "t = temp_for(UriPath.from_uri(sys.argv[2])); t.write_bytes(b'x' * 1000); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp),
                        f"file://{tmp_path}/out/part-rayabc-00000.parquet"], timeout=120)
    assert r.returncode == -signal.SIGKILL
    [stale] = tmp.glob("cage-*.tmp")
    assert stale.name.startswith("cage-part-rayabc-00000.parquet.")
    live = temp_for(UriPath.from_uri(f"file://{tmp_path}/out/x.parquet"))  # this process's
    assert not stale.exists() and live.exists()  # temp_for removed the dead writer's file
    r = cage("annotate", SINGLE, "-o", f"file://{tmp_path}/run/")  # the next run
    assert r.exit_code == 0, r.stderr
    assert live.exists() and remove_stale_temps() == []
    assert sorted(tmp.iterdir()) == [live]


@needs_ray
def test_persons_through_segments_equal_a_local_run(ray_address: str, tmp_path: Path) -> None:
    """--persons with --ray, the clip detected as 3 segment tasks: the same person ids and
    descriptors as a local run (descriptors are computed in the segments, linked in the task
    that tracks the whole video)."""
    args = [CLIP, SINGLE, MEDIA / "multiface.jpg", "--max-frames", "30", "--persons"]
    assert cage("annotate", *args, "-o", tmp_path / "local.parquet").exit_code == 0
    r = cage("annotate", *args, "-o", tmp_path / "ray.parquet", "--ray",
             "--ray-segment-frames", "10")
    assert r.exit_code == 0, r.stderr
    local, ray_rows = read(tmp_path / "local.parquet"), read(tmp_path / "ray.parquet")
    assert local.column("person_id").null_count == 0
    for col in ("source", "frame_index", "face_index", "track_id", "person_id", "embedding"):
        assert ray_rows.column(col).to_pylist() == local.column(col).to_pylist(), col
