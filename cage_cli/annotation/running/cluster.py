"""``cage annotate --ray``: the same pipeline on a Ray cluster (docs/scaling.md).

The driver splits the inputs into tasks (each video alone, photos in small batches). A task runs the
ordinary :class:`~cage_cli.annotation.running.pipeline.Pipeline` over its inputs, in a worker
process that keeps the model loaded between tasks, and writes its rows with the ordinary
:class:`~cage_cli.annotation.io.write.DatasetWriter` into the output's part folder. A long video is
first detected in segments (``segment_task``, cut at --detect-every chunk boundaries), and its task
tracks their detections in order into the rows of a local run:

* The part names are fixed by the task's inputs (``part-ray<hash>-<seq>.parquet``, one part
  per task, a video of more than 20,000 rows in a part of its own). So when Ray retries a
  task whose worker died, the retry overwrites what a dead attempt may have committed instead
  of adding to it; parts are atomic, so a half-written part never appears.
* Each part records the inputs it finished (``cage.done``), exactly as in a local run, so
  ``--resume`` and the final merge work unchanged. :func:`drop_duplicates` is the last guard:
  an input found in two parts (an attempt that outlived its driver) keeps only its first.

Classification runs in the tasks, or (by default when the cluster has GPUs) on a pool of
:class:`Classifier` actors, a few per GPU: a task then decodes, detects, crops and tracks as
usual and sends each group's face crops to an actor (:class:`ActorPipeline`), which batches
the crops of several tasks into its model calls; the rows are built in the task.

Progress comes back while tasks run: each task reports per-input frame and face counts to a
small actor that the driver polls, and the driver turns them into
:class:`~cage_cli.annotation.running.pipeline.Result` pieces for ``annotate_to`` (progress bar,
summary).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ...models import ModelConfig
from ..io.decode import estimated_count
from ..io.inputs import MediaFile
from ..io.store import UriPath, one_line
from ..io.write import (
    DONE_KEY,
    META_KEY,
    DatasetWriter,
    OutputError,
    _fsync_rename,
    arrow_source,
    read_footer,
    remove_stale_temps,
    temp_for,
)
from .cluster_progress import Progress
from .infer import concat, submit_predictions
from .pipeline import AnnotateOptions, Pipeline, Result, RunOptions, _Job

TAG = "ray"  # the run record is _cage_run-ray.json; parts are part-ray<hash>-<seq>.parquet
PARTS = f"part-{TAG}*-*.parquet"
INSTALL_HINT = "--ray needs Ray: pip install 'cage-cli[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray."""

    address: str | None = None  # None: $RAY_ADDRESS, else start a local Ray
    photos_per_task: int = 32  # at most; fewer when that leaves workers idle
    #: GPUs per task where the cluster has GPUs; None: the GPUs shared evenly by the CPU
    #: slots (1 GPU and 16 CPUs: 1/16 each), since each task decodes on one CPU; 0: no GPU
    gpus_per_task: float | None = None
    max_retries: int = 3  # per task, when its worker or node dies
    #: a video of more sampled frames than this is detected in segments of about this many
    #: frames, one task each, then tracked whole (docs/scaling.md); None: never split
    segment_frames: int | None = 2000
    #: classify faces on a pool of Classifier actors that batch the faces of several tasks
    #: into each model call, instead of in each task. None: when the cluster has GPUs;
    #: True: also without (one CPU actor: how the tests run this path); False: never
    classify_actors: bool | None = None
    actors_per_gpu: int = 4  # Classifier actors sharing a GPU (num_gpus 1/4 each)
    actor_batch_size: int = 256  # faces per model call on an actor, at most
    #: one line per cluster event (a node lost) through annotate_to's log; off under --quiet
    events: bool = True
    #: where Ray's own messages go (its C++ log lines, the raylets' error reports), appended;
    #: None: cage-ray.log in the temporary folder ($TMPDIR, else /tmp)
    log_file: str | None = None


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Counted(Result):
    """A piece of a remote input's progress: counts only, its rows are in a part file."""

    face_count: int = 0

    @property
    def faces(self) -> int:
        return self.face_count


class WrittenByWorkers:
    """The driver's writer: the workers write the parts, the driver writes nothing."""

    def add(self, result: Result) -> None:
        pass


def batches(files: list[MediaFile], per_task: int) -> list[list[MediaFile]]:
    """Each video alone; consecutive photos in runs of at most ``per_task``. In input order,
    so parts sorted by their first input merge into input order."""
    out: list[list[MediaFile]] = []
    for f in files:
        if f.media == "image" and out and out[-1][0].media == "image" \
                and len(out[-1]) < per_task:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def segments(count: int, size: int, every: int) -> list[tuple[int, int | None]]:
    """Sampled-frame positions (first, end) of the segments of a video of ``count`` sampled
    frames: about ``size`` frames each, at multiples of ``every`` (--detect-every); the
    decoder moves each end on to the next keyframe block (decode.block_start), so that no
    chunk is split; the last is open-ended."""
    n = math.ceil(count / size)
    step = math.ceil(count / n / every) * every
    cuts = list(range(0, count, step))
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False)] + [(cuts[-1], None)]


def task_tag(files: list[MediaFile]) -> str:
    """The part tag of a task: fixed by its inputs, so a retry writes the same names."""
    digest = hashlib.sha1("\n".join(f.path for f in files).encode("utf-8", "surrogateescape"))
    return f"{TAG}{digest.hexdigest()[:16]}"


def lost_errors() -> tuple[type[Exception], ...]:
    """Ray's exceptions for a worker, actor, node or object that is gone or unreachable: a
    task that raises one is retried (``retry_exceptions``), like a task whose worker died
    (docs/scaling.md, "Failures", has the whole list and what cage does with each)."""
    from ray import exceptions as x

    return (x.RayActorError,  # ActorDiedError, ActorUnavailableError
            x.WorkerCrashedError, x.NodeDiedError, x.LocalRayletDiedError,
            x.ObjectLostError,  # OwnerDiedError, ObjectFetchTimedOutError, Reconstruction...
            x.OutOfMemoryError, x.RaySystemError, x.RpcError)


def log_path(options: RayOptions) -> Path:
    """The file Ray's messages go to during a run (RayOptions.log_file)."""
    import tempfile

    return Path(options.log_file or Path(tempfile.gettempdir()) / "cage-ray.log")


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[None]:
    """Send what Ray prints in this process into ``path`` (appended) instead of the terminal:
    file descriptor 2, where Ray's C++ code logs (e.g. ``gcs_client.cc`` retrying), and the
    raylets' error reports (state dumps of a dead raylet) that Ray's listener thread prints
    to ``sys.stdout``. ``sys.stderr`` keeps writing to the terminal for cage's own lines."""
    import ray._private.worker as ray_worker

    sys.stderr.flush()
    try:
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY)
    os.write(log, f"--- cage {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n"
             .encode())
    saved = os.dup(2)
    own_stderr = None
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if sys.stderr.fileno() == 2:  # a real terminal or file: keep it for cage's lines
            own_stderr = os.fdopen(os.dup(saved), "w", buffering=1,
                                   encoding=sys.stderr.encoding, errors="backslashreplace")
    old_stderr, old_print = sys.stderr, ray_worker.print_to_stdstream

    def to_log(data: dict, ignore_prefix: bool) -> None:  # noqa: ARG001 - Ray's signature
        text = "".join(f"({data.get('pid', 'ray')}) {line}\n" for line in data["lines"])
        os.write(2, text.encode("utf-8", "backslashreplace"))

    os.dup2(log, 2)
    os.close(log)
    if own_stderr is not None:
        sys.stderr = own_stderr
    ray_worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = old_print
        if own_stderr is not None:
            own_stderr.flush()
            sys.stderr = old_stderr
            own_stderr.close()
        os.dup2(saved, 2)
        os.close(saved)


def check_cluster(address: str) -> None:
    """Fail fast, in one line, where ``ray.init`` would retry for a minute and flood the
    terminal: a cluster address (host:port of its GCS) that nothing answers on, or a cluster
    with token authentication that rejects this process's token (or its lack of one)."""
    import socket

    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # not host:port (ray://..., auto): ray.init decides
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise OutputError(f"cannot reach the Ray cluster at {address}: "
                          f"{e.strerror or type(e).__name__}") from None
    try:
        InnerGcsClient.standalone(address, None, 5000)
    except AuthenticationError:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            raise OutputError(
                f"the Ray cluster at {address} rejected this machine's authentication token "
                "(RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token): "
                "use the cluster's token (`ray get-auth-token` on its head node prints it)"
            ) from None
        raise OutputError(
            f"the Ray cluster at {address} needs its authentication token: set "
            "RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN to the cluster's token (or "
            "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token); "
            "`ray get-auth-token` on the head node prints it") from None
    except Exception:  # noqa: BLE001, S110 - anything else: ray.init reports it
        pass


# --- worker side -----------------------------------------------------------------------------

class _Request:
    """Crops sent to a Classifier, and (once classified) their predictions."""

    def __init__(self, crops: torch.Tensor):
        self.crops = crops
        self.preds: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class Classifier:
    """A Ray actor holding the model on its device (a GPU share, or a CPU): classifies the
    crops that tasks send (:meth:`predict`, called by many tasks at once), in model calls of
    the requests waiting together, up to ``batch_size`` faces each."""

    def __init__(self, options: AnnotateOptions, run: RunOptions, batch_size: int):
        from ...models import create_model

        if run.threads:
            torch.set_num_threads(run.threads)
        self.model = create_model(options.model, options.weights, run.device, run.precision)
        self.batch_size = batch_size
        self.requests: queue.Queue[_Request] = queue.Queue()
        self.counts = {"requests": 0, "calls": 0, "faces": 0}
        threading.Thread(target=self._serve, daemon=True).start()

    def predict(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        """``ExpressionModel.predict`` of these crops (waits for the batch they join)."""
        request = _Request(crops)
        self.requests.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.preds  # type: ignore[return-value]

    def node(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def stats(self) -> dict[str, int]:
        """Requests served, model calls made, faces classified."""
        return dict(self.counts)

    def _serve(self) -> None:
        """One model call at a time, on every request that came while the last one ran."""
        while True:
            batch = [self.requests.get()]
            n = len(batch[0].crops)
            while n < self.batch_size and not self.requests.empty():
                batch.append(self.requests.get_nowait())
                n += len(batch[-1].crops)
            try:
                x = torch.cat([r.crops for r in batch if len(r.crops)] or [batch[0].crops])
                calls = range(0, max(len(x), 1), self.batch_size)
                preds = concat([self.model.predict(x[i : i + self.batch_size]) for i in calls])
                j = 0
                for r in batch:
                    r.preds = {k: v[j : j + len(r.crops)] for k, v in preds.items()}
                    j += len(r.crops)
                self.counts["requests"] += len(batch)
                self.counts["calls"] += len(calls)
                self.counts["faces"] += len(x)
            except Exception as e:  # noqa: BLE001 - the callers raise it
                for r in batch:
                    r.error = e
            for r in batch:
                r.done.set()


class ActorModel:
    """A task's model when faces are classified on the Classifier actors: the model's config
    and name (for cropping and rows, done in the task); ``predict`` asks an actor, one on
    the task's own node if there is one (crops need not cross the network).

    An actor that is gone or does not answer (its node lost, or restarting where no resources
    are left) is skipped; with none left, the task classifies itself, on its CPU, with the
    model loaded from ``model`` (name, weights), as a task without actors does."""

    #: seconds to wait for an actor's answer before classifying in the task instead
    TIMEOUT = 300.0

    def __init__(self, config: ModelConfig, actors: tuple,
                 model: tuple[str, str | None] | None = None):
        self.config, self.actors, self.model = config, actors, model
        self.device = torch.device("cpu")  # the crops are made on the task's CPU
        self._near: list | None = None  # the actors to ask, found at the first call
        self._gone: set = set()  # actors that failed to answer
        self._local = None  # the model, loaded here once no actor is left

    @property
    def name(self) -> str:
        return self.config.name

    def predict(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        import ray
        from ray.exceptions import GetTimeoutError

        if self._near is None:
            here = ray.get_runtime_context().get_node_id()
            nodes = []
            for a in self.actors:
                try:
                    nodes.append(ray.get(a.node.remote(), timeout=60))
                except (GetTimeoutError, *lost_errors()):
                    nodes.append(None)
                    self._gone.add(a)
            self._near = [a for a, n in zip(self.actors, nodes, strict=True) if n == here]
        for actor in (*random.sample(self._near, len(self._near)), *self.actors):
            if actor in self._gone:
                continue
            try:
                return ray.get(actor.predict.remote(crops), timeout=self.TIMEOUT)
            except (GetTimeoutError, *lost_errors()):
                self._gone.add(actor)
        if self._local is None:
            from ...models import create_model

            name, weights = self.model or (self.config.name, None)
            self._local = create_model(name, weights, "cpu", "fp32")
        step = 256
        return concat([self._local.predict(crops[i : i + step])
                       for i in range(0, max(len(crops), 1), step)])

    def __getstate__(self) -> dict:  # what goes to a task: no loaded model, no verdicts
        return {**self.__dict__, "_near": None, "_gone": set(), "_local": None}

    def __eq__(self, other: object) -> bool:  # one cached pipeline per pool (_pipeline)
        return isinstance(other, ActorModel) and other.actors == self.actors

    def __hash__(self) -> int:
        return hash(self.actors)


class ActorPipeline(Pipeline):
    """The pipeline with faces classified on the Classifier actors: decoding, detection,
    cropping, tracking and rows as in :class:`Pipeline`; each group's crops go to an actor in
    one request, waited for in a thread of its own while this one detects the next group."""

    def __init__(self, options: AnnotateOptions, run: RunOptions, model: ActorModel):
        from .workers import Workers

        super().__init__(options, run, model)
        self.waiter = Workers(1)

    def _classify(self, job: _Job):  # noqa: ANN202 - workers.Results
        # One chunk of every face (no batch limit here): the actor makes the model calls.
        return submit_predictions(self.model, job.frames, job.faces.get(), 2**31, self.waiter,
                                  self.embedder)

    def close(self) -> None:
        super().close()
        self.waiter.shutdown(wait=False, cancel_futures=True)


@functools.lru_cache(maxsize=1)
def _pipeline(options: AnnotateOptions, run: RunOptions,
              classifier: ActorModel | None = None) -> Pipeline:
    """One pipeline (model, detector) per worker process, kept between tasks; with a
    ``classifier``, one that classifies on the actors."""
    if classifier is not None:
        return ActorPipeline(options, run, classifier)
    return Pipeline(options, run)


def _node() -> str:
    """The Ray node this runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _chdir(cwd: str) -> None:
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative input paths mean what they meant on the driver


def segment_task(file: MediaFile, positions: tuple[int, int | None],
                 options: AnnotateOptions, run: RunOptions, classifier: ActorModel | None,
                 cwd: str, progress) -> list[Result]:  # noqa: ANN001 - a Ray actor handle
    """Detect and classify one segment of a video (its sampled frames at ``positions``):
    :class:`~cage_cli.annotation.running.pipeline.Detections` pieces, then the done piece (with the
    decode error, if any). No rows: the video's ``annotate_task`` tracks the segments in order."""
    _chdir(cwd)
    progress.report.remote({}, (f"{task_tag([file])}:{positions[0]}", _node()))
    out: list[Result] = []
    frames = faces = 0
    last = 0.0
    for r in _pipeline(options, run, classifier).run([file], positions):
        out.append(r)
        if r.detections is not None:
            frames += r.frames
            faces += sum(len(d) for d in r.detections.faces)
            if time.monotonic() - last > 0.5:
                progress.report.remote({(file.path, positions[0]): (frames, faces)})
                last = time.monotonic()
    return out


def _joined(pipeline: Pipeline, file: MediaFile,
            parts: tuple[list[Result], ...]) -> Iterator[Result]:
    """The results of a video detected in segments: the tracker runs over the segments'
    detections in order (as over a local run's), and stops where decoding broke."""
    pipeline._tracking = None  # noqa: SLF001 - a new video
    error = None
    for part in parts:
        for r in part:
            if r.detections is not None:
                yield pipeline.rows(file.path, file.media, r.detections)
            elif r.error:
                error = r.error
        if error:  # a local run decodes no further either
            break
    failed = pipeline._failed.pop(file.path, None)  # noqa: SLF001 - a frame failed detection
    yield Result(file.path, file.media, done=True, error=error or failed)


def annotate_task(files: list[MediaFile], folder: str | UriPath, tag: str, info: dict,
                  options: AnnotateOptions, run: RunOptions, classifier: ActorModel | None,
                  cwd: str, progress, *parts: list[Result]) -> list[dict]:  # noqa: ANN001
    """Run the pipeline over ``files`` into part files ``part-<tag>-*`` in ``folder``; or,
    given the ``parts`` (segment_task results, in order) of a long video, ``files`` being
    that video, track their detections into its rows.

    Returns one entry per input (source, media, frames, faces, error) once its part is
    committed; reports running counts to ``progress`` meanwhile.
    """
    _chdir(cwd)
    progress.report.remote({}, (tag, _node()))
    pipeline = _pipeline(options, run, classifier)
    where = Path(folder) if isinstance(folder, str) else folder
    for tmp in where.glob(f".part-{tag}-*.tmp"):  # left by an attempt that died
        tmp.unlink(missing_ok=True)
    remove_stale_temps()  # an upload's local copy, left by a worker killed on this node
    # One part per task (no time-based commits), so a retry writes the same part names.
    writer = DatasetWriter(where, tag, info, part_rows=2**62, part_seconds=math.inf)
    counts: dict[str, dict] = {}
    last = 0.0
    try:
        results = (pipeline.with_persons(_joined(pipeline, files[0], parts)) if parts
                   else pipeline.run(files))
        for r in results:
            writer.add(r)
            c = counts.setdefault(r.source, {"source": r.source, "media": r.media,
                                             "frames": 0, "faces": 0, "error": None})
            c["frames"] += r.frames
            c["faces"] += r.faces
            c["error"] = r.error
            if time.monotonic() - last > 0.5 and not parts:
                progress.report.remote({(s, 0): (v["frames"], v["faces"])
                                        for s, v in counts.items()})
                last = time.monotonic()
    finally:
        writer.close()  # commits the finished inputs (all of them, unless this failed)
    return list(counts.values())


# --- driver side -----------------------------------------------------------------------------

class RayPipeline:
    """The driver: ``run(files, folder, info)`` yields :class:`Counted` pieces as tasks go.

    Has the :class:`Pipeline` attributes ``annotate_to`` uses: ``model`` (loaded on the CPU
    here, for its checksum and to fail early on a bad model), ``stop`` and ``close``.
    ``log`` gets one line per cluster event (a node lost), if ``RayOptions.events``.
    """

    def __init__(self, options: AnnotateOptions, run: RunOptions, ray_options: RayOptions,
                 log: Callable[[str], None] = lambda line: None):
        from ...models import create_model

        self.options, self.run_options, self.ray_options = options, run, ray_options
        self.log = log if ray_options.events else (lambda line: None)
        self.model = create_model(options.model, options.weights, "cpu", "fp32")
        self.stop = threading.Event()
        self.actor_stats: list[dict[str, int]] = []  # the Classifier actors' of the last run
        self.progress = None  # the progress actor of the run going on
        self._started = False  # connect() started Ray or connected: run() shuts it down

    def close(self) -> None:
        """Stop handing out tasks (the tasks running finish or are retried on --resume)."""
        self.stop.set()

    def connect(self) -> None:
        """Connect to the cluster (or start a local Ray) now, before the run: a cluster that
        cannot be used fails in one line (OutputError) before anything is written."""
        with ray_output_to(log_path(self.ray_options)):
            self._started = self._connect() or self._started

    def _connect(self) -> bool:
        """Connect to the cluster (or start a local Ray); True if this call did."""
        import ray

        if ray.is_initialized():
            return False
        address = self.ray_options.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            check_cluster(address)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     **({} if address else {"include_dashboard": False}))
        except Exception as e:  # noqa: BLE001 - one line, not Ray's traceback
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise OutputError(f"cannot start or reach {where}: {one_line(e)}") from None
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():  # Ray installs its own; cage's stop cleanly
                signal.signal(sig, handler)
        return True

    def _task(self):  # noqa: ANN202 - Ray remote functions, and what they run with
        """The task functions, the RunOptions they run with, the CPU slots, and the
        classifier actors' ActorModel (None: tasks classify)."""
        import ray

        ro = self.ray_options
        resources = ray.cluster_resources()
        cpus = self.run_options.threads or 1
        slots = max(1, int(resources.get("CPU", 1) // cpus))
        all_gpus = resources.get("GPU", 0.0)
        on_actors = ro.classify_actors if ro.classify_actors is not None else all_gpus > 0
        gpus = 0.0 if on_actors else ro.gpus_per_task
        if gpus is None:
            gpus = min(1.0, math.floor(all_gpus / slots * 1e4) / 1e4)
        run = replace(self.run_options, threads=cpus,
                      device=self.run_options.device if gpus else "cpu")
        remote, segment = (ray.remote(f).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=ro.max_retries,
            retry_exceptions=list(lost_errors())) for f in (annotate_task, segment_task))
        classifier = None
        if on_actors:  # a few per GPU, or one on a CPU
            n = max(1, int(all_gpus * ro.actors_per_gpu))
            actor_run = replace(self.run_options, threads=self.run_options.threads or 1,
                                device=self.run_options.device if all_gpus else "cpu")
            actor = ray.remote(Classifier).options(
                num_cpus=0, num_gpus=min(1.0, 1 / ro.actors_per_gpu) if all_gpus else 0,
                max_concurrency=64, max_restarts=ro.max_retries,
                max_task_retries=ro.max_retries)
            classifier = ActorModel(self.model.config, tuple(
                actor.remote(self.options, actor_run, ro.actor_batch_size) for _ in range(n)),
                (self.options.model, self.options.weights))
        return remote, segment, run, slots, classifier

    def _segments(self, file: MediaFile) -> list[tuple[int, int | None]]:
        """The segments of a long video (cluster.segments), or [] for one task. Cut where its
        header says: the rows do not depend on it (the last segment is open-ended, and a
        segment past the end has no frames)."""
        size = self.ray_options.segment_frames
        if size is None or file.media != "video":
            return []
        try:  # the header only, on the driver
            count = estimated_count(file.path, self.options.sampling)
        except Exception:  # noqa: BLE001 - a bad file: its task reports why
            return []
        return segments(count, size, self.options.detect_every) if count > size else []

    def run(self, files: list[MediaFile], folder: Path | UriPath,
            info: dict) -> Iterator[Result]:
        with ray_output_to(log_path(self.ray_options)):
            yield from self._run(files, folder, info)

    def _progress_actor(self):  # noqa: ANN202 - a Ray actor handle
        """The progress actor, on the driver's node if it can (a lost node never takes it
        away), restarted by Ray if it dies all the same."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        return ray.remote(Progress).options(
            num_cpus=0, max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()

    def _failed(self, error: Exception) -> str:
        """The one-line reason of an input whose task failed for good."""
        return f"Ray task failed after {self.ray_options.max_retries} retries: " \
               f"{type(error).__name__}"

    def _run(self, files: list[MediaFile], folder: Path | UriPath,
             info: dict) -> Iterator[Result]:
        import ray
        from ray.exceptions import ActorDiedError, RayError, RayTaskError

        self.stop = threading.Event()
        started = self._connect() or self._started
        self._started = False
        remote, segment, run, slots, classifier = self._task()
        actors = classifier.actors if classifier is not None else ()
        n_photos = sum(f.media == "image" for f in files)
        per_task = max(1, min(self.ray_options.photos_per_task,
                              math.ceil(n_photos / (4 * slots))))
        todo = batches(files, per_task)
        progress = self.progress = self._progress_actor()
        taken = progress.take.remote()
        cwd = os.getcwd()
        where = folder if isinstance(folder, UriPath) else str(folder.resolve())
        seen: dict[str, tuple[int, int]] = {}
        live: dict[str, dict[int, tuple[int, int]]] = {}  # input -> segment -> its counts
        done: set[str] = set()
        media = {f.path: f.media for f in files}
        #: the task that commits an input -> (its inputs, tasks it takes, segment tasks, the
        #: keys of its tasks in the progress reports)
        running: dict = {}
        task_nodes: dict[str, set[str]] = {}  # task key -> the nodes it was seen running on
        nodes_watch: dict = {}  # what _lost_nodes saw at its last look
        polled = 0.0

        def delta(source: str, frames: int, faces: int, finished: bool = False,
                  error: str | None = None) -> Counted:
            f0, n0 = seen.get(source, (0, 0))
            seen[source] = (frames, faces)
            return Counted(source, media.get(source, ""), frames=frames - f0, done=finished,
                           error=error, face_count=faces - n0)

        try:
            while (todo or running) and not self.stop.is_set():
                while todo and sum(n for _, n, _, _ in running.values()) < 2 * slots:
                    batch = todo.pop(0)
                    tag, cuts = task_tag(batch), self._segments(batch[0])
                    parts = [segment.remote(batch[0], p, self.options, run, classifier, cwd,
                                            progress) for p in cuts]
                    ref = remote.remote(batch, where, tag, info, self.options, run,
                                        classifier, cwd, progress, *parts)
                    running[ref] = (batch, max(1, len(parts)), parts,
                                    [tag, *(f"{tag}:{p[0]}" for p in cuts)])
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
                if not ray.wait([taken], timeout=0)[1]:  # never wait for the progress actor
                    try:
                        counts, nodes = ray.get(taken)
                    except RayError as e:  # gone or restarting: the counts come at the end
                        counts, nodes = {}, {}
                        if isinstance(e, ActorDiedError):  # for good: a new one, new tasks
                            progress = self.progress = self._progress_actor()
                    for key, node in nodes.items():
                        task_nodes.setdefault(key, set()).add(node)
                    for (source, part), c in counts.items():
                        if source in done:
                            continue
                        live.setdefault(source, {})[part] = c
                        frames, faces = map(sum, zip(*live[source].values(), strict=True))
                        if (frames, faces) != seen.get(source, (0, 0)):
                            yield delta(source, frames, faces)
                    taken = progress.take.remote()
                if time.monotonic() - polled > 2:
                    polled = time.monotonic()
                    self._lost_nodes(nodes_watch, task_nodes, running)
                for ref in ready:
                    batch = running.pop(ref)[0]
                    try:
                        entries = ray.get(ref)
                    except RayTaskError as e:
                        if isinstance(e.cause, OSError):
                            raise OutputError(f"cannot write {folder}: {one_line(e.cause)}",
                                              1) from None
                        if not isinstance(e.cause, RayError):  # cage's own bug
                            # One line (the task's traceback is in the Ray worker's log).
                            raise RuntimeError(f"a Ray task failed: {type(e.cause).__name__}: "
                                               f"{e.cause}") from None
                        entries = [{"source": f.path, "media": f.media, "frames": 0,
                                    "faces": 0, "error": self._failed(e.cause)} for f in batch]
                    except RayError as e:  # worker, node or object lost, retries spent
                        entries = [{"source": f.path, "media": f.media, "frames": 0,
                                    "faces": 0, "error": self._failed(e)} for f in batch]
                    for e in entries:
                        done.add(e["source"])
                        yield delta(e["source"], e["frames"], e["faces"], True, e["error"])
        finally:
            with contextlib.suppress(Exception):
                for ref, (_, _, parts, _) in running.items():
                    for r in (ref, *parts):
                        ray.cancel(r, force=True)
            with contextlib.suppress(Exception):
                ray.kill(progress)
            if actors:
                with contextlib.suppress(RayError):
                    self.actor_stats = ray.get([a.stats.remote() for a in actors], timeout=10)
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
            if started:
                ray.shutdown()

    def _lost_nodes(self, watch: dict, task_nodes: dict[str, set[str]],
                    running: dict) -> None:
        """One line for each node lost since the last look: one that the cluster no longer
        lists as alive, or (sooner: Ray marks a node dead only after its health checks fail,
        which can take longer than the run) one of this run's nodes whose raylet does not
        answer any more. Says how many of this run's tasks were running on it."""
        import ray
        from ray.util.client import ray as client

        try:
            nodes = ray.nodes()
        except Exception:  # noqa: BLE001 - the GCS busy or unreachable: look again later
            return
        alive, reported = watch.setdefault("alive", {}), watch.setdefault("reported", set())
        now = {n["NodeID"]: (n.get("NodeManagerAddress", "?"), n.get("NodeManagerPort", 0))
               for n in nodes if n.get("Alive")}
        # Through Ray Client (ray://) the nodes' own addresses may not be reachable from here.
        used = set() if client.is_connected() else set().union(*task_nodes.values())
        lost = [node for node in alive if node not in now]
        lost += [node for node, where in now.items() if node in used and not _answers(*where)]
        for node in dict.fromkeys(lost):
            if node in reported:
                continue
            reported.add(node)
            keys = {k for _, _, _, ks in running.values() for k in ks}
            n = sum(node in task_nodes.get(k, ()) for k in keys)
            address = (alive.get(node) or now.get(node) or ("?",))[0]
            self.log(f"cage: a Ray node was lost ({address}, node {node[:8]}): "
                     f"{n} task{'s' if n != 1 else ''} of this run retried elsewhere; "
                     f"Ray's messages are in {log_path(self.ray_options)}")
        alive.clear()
        alive.update(now)


def _answers(host: str, port: int) -> bool:
    """Whether a raylet listens at host:port (a refused or timed-out connection: no)."""
    import socket

    if not port:
        return True  # not known: the cluster's word only
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def drop_duplicates(folder: Path | UriPath) -> list[Path | UriPath]:
    """The Ray parts in ``folder``, each input in one part only; returns them in input order
    (by their first input).

    An input recorded in two parts (an attempt that committed after its driver gave up on
    it) keeps its first; a later part is rewritten without it (atomically), or removed if
    nothing else is left in it.
    """
    owner: dict[str, Path | UriPath] = {}
    kept: list[tuple[str, Path | UriPath]] = []
    for part in sorted(folder.glob(PARTS)):
        meta = read_footer(part)
        entries = json.loads(meta.get(DONE_KEY, b"[]"))
        dup = {e["source"] for e in entries if e["source"] in owner}
        for e in entries:
            owner.setdefault(e["source"], part)
        if not dup:
            kept.append((entries[0]["source"], part))
            continue
        rest = [e for e in entries if e["source"] not in dup]
        if not rest:
            part.unlink()
            continue
        table = pq.read_table(**arrow_source(part))
        table = table.filter(pc.invert(pc.is_in(table["source"], pc.array(list(dup)))))
        table = table.replace_schema_metadata({META_KEY: meta.get(META_KEY, b"{}"),
                                               DONE_KEY: json.dumps(rest)})
        tmp = temp_for(part)
        pq.write_table(table, tmp, compression="zstd")
        _fsync_rename(tmp, part)
        kept.append((rest[0]["source"], part))
    return [part for _, part in sorted(kept)]
