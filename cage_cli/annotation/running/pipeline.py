"""The annotate pipeline: inputs -> decode (background thread) -> detect -> infer -> results.

Library use::

    from cage_cli import annotate
    for batch in annotate(["photos/"]):      # pyarrow.RecordBatch, one row per face
        ...

Each stage is a plain function over a batch of frames; this module only wires them together,
overlapping decoding (a thread with a bounded queue) with detection and inference.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from ...models import DEFAULT_MODEL, ExpressionModel, create_model
from ..detection import track
from ..detection.detect import DetectOptions, Detector, Faces
from ..identity import persons
from ..identity.embed import load_embedding_model
from ..identity.linkage import DEFAULT_THRESHOLD
from ..io.decode import DecodeError, Frame, Sampling, frames
from ..io.inputs import MediaFile, discover
from .infer import concat, submit_predictions, to_rows
from .workers import Results, cpu_workers, release_memory, tune_malloc


@dataclass(frozen=True)
class AnnotateOptions:
    """Every option that changes the rows (recorded in the output's metadata)."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    detect: DetectOptions = field(default_factory=DetectOptions)
    keep_empty: bool = False
    #: videos: full detection at least every K frames of the video (at its own frame rate:
    #: on the first sampled frame of each block of K), and after every cut; faces are
    #: followed on the sampled frames between (cage_cli.annotation.detection.detect). 1: every
    #: sampled frame detected in full.
    detect_every: int = 5
    cuts: bool = True  # videos: find cuts (shots.py); a cut forces a keyframe, ends tracks
    track_gap: float = 1.0  # seconds of video time a track may go unseen (track.py)
    smooth: float | None = None  # per-track smoothing time constant in seconds; None: off
    #: --persons: face descriptors and person ids (cage_cli.annotation.identity.persons); opt-in,
    #: embeddings are biometric data
    persons: bool = False
    person_threshold: float = DEFAULT_THRESHOLD  # descriptor distance (identity/linkage.py)


@dataclass(frozen=True)
class RunOptions:
    """Options that change speed, not rows."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64  # faces per model call
    frames_per_batch: int = 16  # frames per group (detected while the last is classified)
    #: decoded frames in flight (queued, detected, classified), in MiB: two groups of frames
    #: is all the overlap needs; more only holds memory (docs/performance.md)
    buffer_mb: int = 128
    threads: int | None = None  # CPU worker threads (None: torch's thread count)


@dataclass
class Result:
    """A piece of the output for one input file. ``done`` marks its last piece."""

    source: str
    media: str
    rows: pa.RecordBatch | None = None
    frames: int = 0
    done: bool = False
    error: str | None = None
    #: a segment of a ``--ray`` run (``Pipeline.run(..., positions)``): a video's frames
    #: (without pixels), faces and predictions before tracking, instead of rows
    detections: Detections | None = None

    @property
    def faces(self) -> int:
        """Face rows in this piece (--keep-empty rows have no face)."""
        if self.rows is None:
            return 0
        return self.rows.num_rows - self.rows.column("face_index").null_count


@dataclass
class Detections:
    """Consecutive frames of one video, detected and classified, not yet tracked."""

    frames: list[Frame]  # a segment's: images (H, W, 0), the frame size without the pixels
    faces: list[Faces]
    preds: dict[str, np.ndarray]


@dataclass
class _End:
    """Decoder's marker: a file is finished (with an error, if it failed)."""

    file: MediaFile
    frames: int
    error: str | None


_STOP = object()


@dataclass
class _Job:
    """A group of decoded items whose frames are being detected."""

    group: list[Frame | _End]
    frames: list[Frame]
    faces: Results  # the detections, maybe still running
    n_bytes: int


class _Budget:
    """Bytes of decoded frames in flight: the decoder waits while the budget is spent."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cv = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> None:
        with self._cv:
            while self.used and self.used + n > self.limit and not stop.is_set():
                self._cv.wait(0.1)
            self.used += n

    def release(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


def _decode_all(files: list[MediaFile], options: AnnotateOptions, out: queue.Queue,
                budget: _Budget, stop: threading.Event,
                positions: tuple[int, int | None] | None = None) -> None:
    """Producer thread: decode every file into ``out``, then _STOP."""
    try:
        for file in files:
            if stop.is_set():
                break
            n, error = 0, None
            try:
                for frame in frames(file, options.sampling, positions, options.cuts,
                                    options.detect_every):
                    if stop.is_set():
                        error = "interrupted"
                        break
                    budget.acquire(frame.image.nbytes, stop)
                    out.put(frame)
                    n += 1
            except DecodeError as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - a bad file must never stop the run
                error = f"unexpected {type(e).__name__}: {e}"
            out.put(_End(file, n, error))
    finally:
        out.put(_STOP)


class Pipeline:
    """Holds the model and detector; ``run(files)`` yields :class:`Result` pieces in order."""

    def __init__(self, options: AnnotateOptions = AnnotateOptions(),
                 run: RunOptions = RunOptions(), model: ExpressionModel | None = None):
        if run.threads:
            torch.set_num_threads(run.threads)
        self.options = options
        self.run_options = run
        self.model = model or create_model(options.model, options.weights, run.device,
                                           run.precision)
        tune_malloc()
        self.workers = cpu_workers(self.model.device, run.threads)
        self.detector = Detector(options.detect, self.model.device, self.workers)
        self.embedder = (load_embedding_model(device=str(self.model.device))
                         if options.persons else None)
        self.stop = threading.Event()
        self._failed: dict[str, str] = {}  # source -> why a frame of it failed detection
        self._tracking: tuple[str, track.TrackState] | None = None  # the current video's
        self._segment = False  # run(..., positions): yield Detections, not rows

    def run(self, files: list[MediaFile],
            positions: tuple[int, int | None] | None = None) -> Iterator[Result]:
        """Results for ``files``, in order. Decoding runs ahead in a thread, bounded by
        ``buffer_mb``. Frames are grouped (``frames_per_batch`` frames, half the buffer, or
        whatever has come when the decoder pauses and the last group's detection is done).
        When a group is ready, the last group's classification is queued, then this group's
        detection, so the workers detect while this thread builds rows.

        With ``positions`` (first, end; a segment of a ``--ray`` run,
        cage_cli.annotation.running.cluster), videos give only their sampled frames at those
        positions, as :class:`Detections` (see :meth:`rows`) instead of rows."""
        return self.with_persons(self._run(files, positions))

    def _run(self, files: list[MediaFile],
             positions: tuple[int, int | None] | None = None) -> Iterator[Result]:
        ro = self.run_options
        self.stop = threading.Event()
        self._segment = positions is not None
        q: queue.Queue = queue.Queue()
        budget = _Budget(ro.buffer_mb * 2**20)
        producer = threading.Thread(
            target=_decode_all,
            args=(files, self.options, q, budget, self.stop, positions),
            daemon=True,
        )
        producer.start()
        group: list[Frame | _End] = []
        n_frames = n_bytes = 0
        pending: _Job | None = None  # detected or being detected, not yet classified
        last: _Job | None = None  # the last group started with frames: a chunk may go on
        try:
            while not self.stop.is_set():
                try:
                    item = q.get(timeout=0.05 if group or pending else None)
                except queue.Empty:
                    item = None
                if item is not None and item is not _STOP:
                    group.append(item)
                    if isinstance(item, Frame):
                        n_frames += 1
                        n_bytes += item.image.nbytes
                full = n_frames >= ro.frames_per_batch or n_bytes >= budget.limit // 2
                # The decoder is slower than the workers: don't keep them (or results) waiting.
                idle = item is None and (pending is None or pending.faces.done())
                if item is _STOP or full or idle:
                    predictions = self._classify(pending) if pending is not None else None
                    job = self._start(group, n_bytes, last) if group else None
                    last = job if job is not None and job.frames else last
                    if pending is not None:
                        if self.stop.is_set():
                            break
                        yield from self._results(pending, concat(predictions.get()))
                        budget.release(pending.n_bytes)
                        if any(isinstance(x, _End) for x in pending.group):
                            release_memory()  # between files; within a video, memory is reused
                    pending, group, n_frames, n_bytes = job, [], 0, 0
                if item is _STOP:
                    if pending is not None and not self.stop.is_set():
                        yield from self._results(pending, concat(self._classify(pending).get()))
                    break
        finally:
            self.stop.set()
            producer.join()

    def close(self) -> None:
        """Drop the work still queued for the worker threads and let them end (a run that
        stopped early need not finish detecting frames nobody will read). No run after this."""
        self.stop.set()
        if self.workers is not None:
            self.workers.shutdown(wait=False, cancel_futures=True)

    def _start(self, group: list[Frame | _End], n_bytes: int, previous: _Job | None) -> _Job:
        """Start detecting a group. A group may begin inside a chunk (--detect-every): its
        first frames then continue from the last faces of the ``previous`` group with frames
        (whether or not its rows have been given out yet), whose detection is finished by now
        (``run`` classifies a group before it starts the next)."""
        fr = [x for x in group if isinstance(x, Frame)]
        seed = None
        if fr and not self._keyframe(fr[0]) and previous is not None and previous.frames \
                and previous.frames[-1].source == fr[0].source \
                and previous.frames[-1].index == fr[0].previous:
            seed = previous.faces.get()[-1]
        faces = self.detector.submit([f.image for f in fr], [f.media == "image" for f in fr],
                                     [self._keyframe(f) for f in fr], seed)
        return _Job(group, fr, faces, n_bytes)

    def _keyframe(self, frame: Frame) -> bool:
        """Photos get full detection; so does a video's first sampled frame, the first of each
        block of ``detect_every`` video frames (block k: frames k*K to k*K + K - 1, so at
        most K frames of the video apart, whatever the sampling: sparse sampling makes every
        sampled frame a keyframe), and the first frame after a cut."""
        if frame.media == "image" or frame.previous is None or frame.cut:
            return True
        k = self.options.detect_every
        return frame.index // k != frame.previous // k

    def _track(self, frames: list[Frame], faces: list[Faces],
               preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Give the faces of consecutive frames of one video their track ids and shot (and,
        with --smooth, smooth their predictions); the tracker runs here, in frame order."""
        o = self.options
        if self._tracking is None or self._tracking[0] != frames[0].source or \
                frames[0].position == 0:
            self._tracking = (frames[0].source, track.TrackState(gap=o.track_gap))
        state = self._tracking[1]
        values = (np.column_stack([preds["probs"], preds["valence"], preds["arousal"]])
                  if o.smooth else None)
        j = 0
        for frame, det in zip(frames, faces, strict=True):
            if frame.cut:
                track.new_shot(state)
            embeddings = preds["embedding"][j : j + len(det)] if "embedding" in preds else None
            _, det.track_ids = track.update(state, frame.timestamp, det.boxes, det.landmarks,
                                            det.links, embeddings)
            det.shot = state.shot
            if values is not None and len(det):
                values[j : j + len(det)] = track.smooth(state, frame.timestamp, det.track_ids,
                                                        values[j : j + len(det)], o.smooth)
            j += len(det)
        if values is None:
            return preds
        return {**preds, "probs": values[:, :-2], "valence": values[:, -2],
                "arousal": values[:, -1]}

    def _classify(self, job: _Job) -> Results:
        """Wait for a group's faces and start classifying them."""
        return submit_predictions(self.model, job.frames, job.faces.get(),
                                  self.run_options.batch_size, self.workers, self.embedder)

    def _results(self, job: _Job, preds: dict) -> Iterator[Result]:
        """Rows of a classified group, per file, in order."""
        group, fr, faces = job.group, job.frames, job.faces.get()
        # Split the group into runs of consecutive frames of one file, then rows per run.
        j = k = 0
        i = 0
        while i < len(group):
            item = group[i]
            if isinstance(item, _End):
                failed = self._failed.pop(item.file.path, None)
                yield Result(item.file.path, item.file.media, frames=0, done=True,
                             error=item.error or failed)
                i += 1
                continue
            start = k
            while i < len(group) and isinstance(group[i], Frame) and \
                    group[i].source == item.source:
                i += 1
                k += 1
            run_frames, run_faces = fr[start:k], faces[start:k]
            n = sum(len(d) for d in run_faces)  # a frame that failed detection has none
            run_preds = {key: v[j : j + n] for key, v in preds.items()}
            j += n
            if self._segment and item.media == "video":
                pixelless = [replace(f, image=np.empty((*f.image.shape[:2], 0), np.uint8))
                             for f in run_frames]
                yield Result(item.source, item.media, frames=len(run_frames),
                             detections=Detections(pixelless, run_faces, run_preds))
            else:
                yield self.rows(item.source, item.media,
                                Detections(run_frames, run_faces, run_preds))

    def rows(self, source: str, media: str, d: Detections) -> Result:
        """The rows of consecutive frames of one file. Videos are tracked here, in frame
        order: a ``--ray`` run that detected a video in segments gives each segment's
        :class:`Detections` here in order, and gets the rows of a local run."""
        run_frames, run_faces, run_preds = d.frames, d.faces, d.preds
        if any(f.error for f in run_faces):  # no rows; the file fails at its end
            self._failed.setdefault(source, next(f.error for f in run_faces if f.error))
            kept = [(fr, f) for fr, f in zip(run_frames, run_faces, strict=True)
                    if not f.error]
            run_frames, run_faces = [fr for fr, _ in kept], [f for _, f in kept]
        if media == "video":
            run_preds = self._track(run_frames, run_faces, run_preds)
        rows = to_rows(self.model, run_frames, run_faces, run_preds, self.options.keep_empty)
        if self.embedder is not None and media == "image" and rows.num_rows:
            rows = _batch(persons.assign(pa.Table.from_batches([rows]), media,
                                         self.options.person_threshold))
        return Result(source, media, rows, frames=len(run_frames))

    def with_persons(self, results: Iterable[Result]) -> Iterator[Result]:
        """--persons: a video's rows are held until its last frame, when its tracks are linked
        into persons (cage_cli.annotation.identity.persons); its pieces before carry only their
        frame counts (progress). Other results pass unchanged."""
        held: dict[str, list[pa.RecordBatch]] = {}
        for r in results:
            if self.embedder is None or r.media != "video" or r.detections is not None:
                yield r
                continue
            if r.rows is not None and r.rows.num_rows:
                held.setdefault(r.source, []).append(r.rows)
            if not r.done:
                yield replace(r, rows=None)
                continue
            parts = held.pop(r.source, [])
            if parts:
                table = persons.assign(pa.Table.from_batches(parts), r.media,
                                       self.options.person_threshold)
                yield Result(r.source, r.media, _batch(table))
            yield r


def _batch(table: pa.Table) -> pa.RecordBatch:
    """A table with rows as one record batch."""
    return table.combine_chunks().to_batches()[0]


def annotate(inputs: Iterable[str], options: AnnotateOptions = AnnotateOptions(),
             run: RunOptions = RunOptions()) -> Iterator[pa.RecordBatch]:
    """Annotate files, folders or globs; yield Arrow record batches (schema: cage_cli.SCHEMA).

    Files that fail are reported on stderr and skipped; use :class:`Pipeline` to get them.
    """
    found = discover(inputs)
    for path, reason in found.warnings:
        print(f"cage: warning: {path}: {reason}", file=sys.stderr)
    for path, reason in found.errors:
        print(f"cage: skipped {path}: {reason}", file=sys.stderr)
    for result in Pipeline(options, run).run(found.files):
        if result.error:
            print(f"cage: skipped {result.source}: {result.error}", file=sys.stderr)
        if result.rows is not None and result.rows.num_rows:
            yield result.rows
