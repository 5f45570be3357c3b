"""The `cage` command line: a thin Typer layer over the library (cage_cli.annotate etc.).

Heavy imports (torch, the models) happen inside the commands so that `cage --help` is quick.
"""

from __future__ import annotations

import atexit
import io
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup

from . import DEFAULT_MODEL, __version__
from .annotation.detection.detect import DetectOptions
from .annotation.identity.linkage import DEFAULT_THRESHOLD


def _names_not_types(params: list) -> list:
    """Help rows show each parameter's metavar (PATH, N, ...), not Typer's Python types: a flag
    takes no value (no `<bool>`), an argument's name column already shows its metavar."""
    for p in params:
        if isinstance(p, TyperArgument) and p.metavar:
            p.display_type_rich = lambda ctx: None
        elif getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _names_not_types(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _names_not_types(super().get_params(ctx))


class _Typer(typer.Typer):
    """Every command gets the help layout of ``_Command``, also commands added later."""

    def command(self, *args, cls: type[TyperCommand] | None = None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _Typer(
    name="cage",
    help="""Annotate faces in photos and videos with facial expression, valence and arousal.

Example (the photos and clip in this repository's examples/ folder):

```
cage annotate examples/ -o faces.parquet
cage summary faces.parquet
```
""",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    cls=_Group,
)
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cage {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the version (as recorded in every run's metadata) and exit.")] = False,
) -> None:
    pass


def main() -> None:
    """The ``cage`` console script (and ``python -m cage_cli``): run the command, then exit."""
    try:
        app(prog_name="cage")
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    _exit(code)


def _exit(code: int | str | None) -> None:
    """Exit as Python's own shutdown would (other threads finished, exit handlers run, stdout
    and stderr flushed), but without then freeing every object one by one: with torch
    loaded, that teardown takes 0.4 s, a sixth of a short run (docs/performance.md)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # pragma: no cover - not CPython: exit the ordinary way
        sys.exit(code)
    shutdown()  # what the interpreter calls first: joins the non-daemon threads
    atexit._run_exitfuncs()
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    code = code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # the status Python gives when its final flush fails
    os._exit(code)


def _stdout() -> Console:
    """A console for tables on stdout: a terminal's width; into a pipe or file, room for a
    table's natural width (rich would otherwise fold it, file names and all, at 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line on stderr and exit with ``code``."""
    err.print(f"cage: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _beside(annotations: str, suffix: str) -> str:
    """A default output next to the annotations: faces.parquet + ".png" -> faces.png (for
    annotations on a URI, s3://bucket/faces.parquet, in the working folder)."""
    from .annotation.io.store import is_uri, uri_path

    if is_uri(annotations):
        return Path(uri_path(annotations).rstrip("/")).stem + suffix
    return str(Path(annotations).parent / (Path(annotations).resolve().stem + suffix))


def _debug_guard(debug: bool, exc: BaseException) -> None:
    if debug:
        traceback.print_exception(exc)
    fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


def _reader_gone() -> None:
    """Stdout's reader closed the pipe (`cage annotate -o - | head`): a normal end in a shell
    pipeline. Exit quietly with SIGPIPE's conventional status, 128 + 13 = 141."""
    try:  # Python flushes stdout at exit, which would fail (and say so) once more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file descriptor (in-process runs)
    raise typer.Exit(128 + signal.SIGPIPE)


@app.command()
def annotate(
    inputs: Annotated[Optional[list[str]], typer.Argument(  # noqa: UP045
        metavar="PATH", help="Photos, videos, folders (searched recursively) or glob patterns.",
        show_default=False)] = None,
    output: Annotated[str, typer.Option(
        "-o", "--output", metavar="PATH",
        help="Output: out.parquet | out.jsonl | out.csv, a folder/ (Parquet dataset of part "
             "files, resumable, shardable) or - (JSON lines on stdout). A file or folder may "
             "be a URI: s3://bucket/prefix/, gs://..., any pyarrow filesystem.")] = ...,
    files_from: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE",
        help="Read more input paths from this file, one per line ('-' = stdin). They count "
             "as on the command line: a folder is searched whole (`find -type f` lists "
             "files only).")] = None,
    fmt: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--format", metavar="FORMAT", help="parquet | jsonl | csv.",
        show_default="from the output's extension")] = None,
    model: Annotated[str, typer.Option(
        metavar="MODEL", help="Model name from `cage models`.")] = DEFAULT_MODEL,
    weights: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Local weights file (a state dict) for --model.",
        show_default="the model's bundled weights")] = None,
    fps: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="FPS", help="Videos: sample this many frames per second of video time.",
        show_default="every frame", rich_help_panel="Video sampling")] = None,
    every: Annotated[int, typer.Option(
        metavar="N", help="Videos: keep every N-th (sampled) frame.",
        rich_help_panel="Video sampling")] = 1,
    max_frames: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="Videos: at most N frames per video.", show_default="no limit",
        rich_help_panel="Video sampling")] = None,
    start: Annotated[float, typer.Option(
        metavar="SECONDS", help="Videos: start at this time.",
        rich_help_panel="Video sampling")] = 0.0,
    end: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="SECONDS", help="Videos: stop at this time.", show_default="the video's end",
        rich_help_panel="Video sampling")] = None,
    detector: Annotated[str, typer.Option(
        metavar="mtcnn|auto|none",
        help="mtcnn: detect faces. none: each image/frame is one face (pre-cropped "
             "datasets). auto: mtcnn, then retry images without a face on a padded copy, "
             "then treat small images (<= "
             f"{DetectOptions.whole_max_side} px on their longer side) as one face.",
        rich_help_panel="Detection")] = "mtcnn",
    min_face: Annotated[float, typer.Option(
        metavar="PX", help="Smallest face kept, in pixels (shorter box side, full resolution).",
        rich_help_panel="Detection")] = 20.0,
    det_threshold: Annotated[float, typer.Option(
        metavar="P", help="Smallest MTCNN final-stage probability kept.",
        rich_help_panel="Detection")] = 0.9,
    max_faces: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="K", help="Keep only the K largest faces per frame.", show_default="all",
        rich_help_panel="Detection")] = None,
    det_max_side: Annotated[int, typer.Option(
        metavar="PX",
        help="Detect on a copy downscaled to this longer side (0 = full resolution); boxes "
             "are mapped back and crops come from the full frame.",
        rich_help_panel="Detection")] = 960,
    detect_every: Annotated[int, typer.Option(
        metavar="K",
        help="Videos: full face detection (a keyframe) at least every K frames of the video "
             "(at its own frame rate: 0.2 s at 25 fps for K=5) and after every cut; on the "
             "sampled frames between, each face is followed near where it moved (a cheaper "
             "search, rows with face_source tracked). Trades speed for faces that enter "
             "between keyframes: they appear at the next one. Sampling as sparse as K frames "
             "(--fps 5 at 25 fps) detects every sampled frame in full. 1: every sampled "
             "frame.",
        rich_help_panel="Tracking")] = 5,
    cuts: Annotated[bool, typer.Option(
        "--cuts/--no-cuts",
        help="Videos: find cuts (shot changes) between sampled frames; a cut forces a "
             "keyframe, ends every track and starts a new shot (column shot). "
             "docs/schema.md.",
        rich_help_panel="Tracking")] = True,
    track_gap: Annotated[float, typer.Option(
        metavar="SECONDS",
        help="Videos: a person unseen for longer than this (seconds of video time) gets a "
             "new track_id when seen again. Keep it above the time between sampled frames.",
        rich_help_panel="Tracking")] = 1.0,
    smooth: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="SECONDS",
        help="Videos: smooth each track's probabilities, valence and arousal over time (a "
             "causal moving average with this time constant; the label follows). Default: "
             "off, raw values.",
        rich_help_panel="Tracking")] = None,
    persons: Annotated[bool, typer.Option(
        "--persons",
        help="Who is who: a person_id on every face (within each photo or video, tracks of "
             "one person share it, also across cuts and absences) from a bundled face-"
             "embedding model, and one descriptor per track (embedding) for `cage persons`. "
             "Opt-in: face embeddings are biometric data (docs/persons.md).",
        rich_help_panel="Persons")] = False,
    person_threshold: Annotated[float, typer.Option(
        metavar="DIST",
        help="--persons: tracks whose descriptors are closer than this are one person "
             "(lower: fewer wrong merges, more splits).",
        rich_help_panel="Persons")] = DEFAULT_THRESHOLD,
    keep_empty: Annotated[bool, typer.Option(
        help="Add a row with null face fields for each frame or image without a face.")] = False,
    max_pixels: Annotated[int, typer.Option(
        metavar="N",
        help="Skip images and videos whose frames have more than N pixels (width x height), "
             "checked from the file's header before decoding.")] = 250_000_000,
    batch_size: Annotated[int, typer.Option(
        metavar="N", help="Faces per model call.", rich_help_panel="Performance")] = 64,
    frames_per_batch: Annotated[int, typer.Option(
        metavar="N",
        help="Frames per group: one group is detected while the one before is classified "
             "(on a GPU, one detection call per group).",
        rich_help_panel="Performance")] = 16,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps.",
        rich_help_panel="Performance")] = "auto",
    precision: Annotated[str, typer.Option(
        metavar="PRECISION", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16.",
        rich_help_panel="Performance")] = "auto",
    threads: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N",
        help="CPU worker threads, each detecting or classifying with one torch thread. Use "
             "fewer on a machine shared with other jobs.",
        show_default="torch's thread count, usually the cores",
        rich_help_panel="Performance")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue an interrupted run into the same output; finished inputs are skipped.",
        rich_help_panel="Runs")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing output.", rich_help_panel="Runs")] = False,
    shard: Annotated[str, typer.Option(
        metavar="I/N",
        help="Process only shard I of N (N processes together cover every input once; "
             "needs a folder output).", rich_help_panel="Runs")] = "0/1",
    errors: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Append one JSON line per failed file to this file.",
        rich_help_panel="Runs")] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on a Ray cluster (--ray-address, $RAY_ADDRESS, or a local Ray). "
                      "Inputs must be at the same path on every node, the output too or at "
                      "a URI (s3://...). "
                      "docs/scaling.md.", rich_help_panel="Runs")] = False,
    ray_address: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="ADDRESS", show_default="$RAY_ADDRESS, else a local Ray",
        help="Ray cluster to connect to, e.g. ray://head:10001 (implies --ray).",
        rich_help_panel="Runs")] = None,
    ray_segment_frames: Annotated[int, typer.Option(
        metavar="N", min=0,
        help="With --ray, detect a video of more than N sampled frames in segments of about "
             "N frames, one task each (same rows); 0: never split.",
        rich_help_panel="Runs")] = 2000,  # running.cluster.RayOptions.segment_frames
    ray_gpu_actors: Annotated[Optional[bool], typer.Option(  # noqa: UP045
        "--ray-gpu-actors/--no-ray-gpu-actors", show_default="on when the cluster has GPUs",
        help="With --ray: classify on a pool of GPU actors that batch the faces of several "
             "tasks, tasks detecting on their CPUs; off: each task runs the whole pipeline "
             "on a share of a GPU. docs/scaling.md.",
        rich_help_panel="Runs")] = None,  # running.cluster.RayOptions.classify_actors
    part_seconds: Annotated[float, typer.Option(
        metavar="SECONDS", hidden=True,
        help="Commit a part file at least this often (seconds).")] = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
        help="No progress bar and no summary.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
        help="Also name each file left out as not media, and why.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Find faces in photos and videos and write one row per face: box, landmarks, expression
    probabilities, label, valence and arousal. Schema: docs/schema.md.

    Exit codes: 0 all inputs done, 1 some files failed (the others' rows are written),
    2 usage error, 130/143 interrupted (resume with --resume), 141 the reader of `-o -`
    closed the pipe (e.g. `| head`).

    Examples:

    ```
    cage annotate examples/ -o faces.parquet
    cage annotate interview.mp4 --fps 5 -o - | jq .label
    cage annotate big_collection/ -o out_dir/ --resume
    ```
    """
    from .annotation.detection.detect import DETECTORS
    from .annotation.io.decode import Sampling
    from .annotation.io.inputs import discover, parse_shard, read_list
    from .annotation.io.write import OutputError
    from .annotation.running.cluster import INSTALL_HINT, RayOptions, have_ray
    from .annotation.running.pipeline import AnnotateOptions, RunOptions
    from .annotation.running.progress import RunProgress, print_summary
    from .annotation.running.runner import annotate_to
    from .models import ModelError

    paths = list(inputs or [])
    if files_from:
        try:
            paths += read_list(files_from)
        except OSError as e:
            fail(f"cannot read --files-from {files_from}: {e.strerror or e}")
    if not paths:
        fail("no inputs given (pass files, folders or globs, or --files-from)")
    if detector not in DETECTORS:
        fail(f"--detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    for name, value in (("--batch-size", batch_size), ("--every", every),
                        ("--frames-per-batch", frames_per_batch)):
        if value < 1:
            fail(f"{name} must be at least 1")
    if fps is not None and fps <= 0:
        fail("--fps must be positive")
    if max_pixels < 1:
        fail("--max-pixels must be at least 1")
    if detect_every < 1:
        fail("--detect-every must be at least 1")
    if track_gap < 0:
        fail("--track-gap must not be negative")
    if smooth is not None and smooth <= 0:
        fail("--smooth must be positive")
    if person_threshold <= 0:
        fail("--person-threshold must be positive")
    try:
        shard_ij = parse_shard(shard)
    except ValueError as e:
        fail(str(e))
    ray = ray or ray_address is not None
    if ray and not have_ray():
        fail(INSTALL_HINT)
    found = discover(paths)
    if verbose:
        for path, why in found.skipped:
            err.print(f"cage: ignored {path}: {why}", markup=False, highlight=False,
                      soft_wrap=True)
    if not found.files:
        for path, reason in found.errors:
            err.print(f"cage: skipped {path}: {reason}", markup=False, highlight=False,
                      soft_wrap=True)
        fail(f"nothing to do: no image or video files in {', '.join(paths)}"
             + (f" ({len(found.skipped)} other files skipped; --verbose names them)"
                if found.skipped and not verbose else ""))
    options = AnnotateOptions(
        model=model,
        weights=str(Path(weights).resolve()) if weights else None,
        sampling=Sampling(fps=fps, every=every, max_frames=max_frames, start=start, end=end,
                          max_pixels=max_pixels),
        detect=DetectOptions(detector=detector, threshold=det_threshold, min_face=min_face,
                             max_faces=max_faces, max_side=det_max_side or None),
        keep_empty=keep_empty,
        detect_every=detect_every,
        cuts=cuts,
        track_gap=track_gap,
        smooth=smooth,
        persons=persons,
        person_threshold=person_threshold,
    )
    run = RunOptions(device=device, precision=precision, batch_size=batch_size,
                     frames_per_batch=frames_per_batch, threads=threads)
    show = not quiet and err.is_terminal
    progress = RunProgress(err, enabled=show)
    try:
        with progress:
            summary = annotate_to(
                paths, output, options, run, fmt=fmt, resume=resume, overwrite=overwrite,
                shard=shard_ij, errors_file=errors, found=found,
                on_start=progress.start, on_result=progress.update,
                log=progress.log, part_seconds=part_seconds,
                ray=RayOptions(address=ray_address, segment_frames=ray_segment_frames or None,
                               classify_actors=ray_gpu_actors, events=not quiet)
                if ray else None,
            )
    except (OutputError, ModelError) as e:
        fail(str(e), getattr(e, "exit_code", 2))
    except BrokenPipeError:
        _reader_gone()
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    if not quiet:
        print_summary(err, summary)
    if summary.interrupted:
        err.print(f"cage: interrupted by {summary.interrupted}; finished inputs are saved. "
                  f"Resume with the same command plus --resume.", markup=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)


@app.command("models")
def models_cmd(
    name: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        metavar="MODEL", help="Show this model's config and card.", show_default=False)] = None,
) -> None:
    """List the registered models (expression and face-embedding), or show one model's config
    and card.

    Examples:

    ```
    cage models
    cage models faceapi-expression
    ```
    """
    from rich.markdown import Markdown
    from rich.table import Table

    from .models import ModelError, get_config, list_models

    out = _stdout()
    if name is None:
        table = Table(title="cage models", caption="* default of `cage annotate`. "
                      "`cage models NAME` shows a model's config and card.")
        table.add_column("name", no_wrap=True)
        for col in ("input", "classes", "VA", "weights", "licence"):
            table.add_column(col)
        for n in list_models():
            c = get_config(n)
            table.add_row(
                n + (" *" if n == DEFAULT_MODEL else ""),
                f"{c.input_size}x{c.input_size} {'gray' if c.channels == 1 else 'RGB'}",
                str(len(c.classes)) if c.classes else "-",
                c.va_method,
                "bundled" if c.bundled else "needs --weights",
                c.licence.split(" (")[0],
            )
        out.print(table)
        table = Table(title="face-embedding models",
                      caption="Opt-in: embeddings are biometric data.")
        for col in ("name", "input", "output", "weights", "licence"):
            table.add_column(col, no_wrap=col == "name")
        for n in list_models("embedding"):
            c = get_config(n)
            table.add_row(n, f"{c.input_size}x{c.input_size} RGB", f"{c.embedding_size}-D",
                          "bundled" if c.bundled else "needs --weights",
                          c.licence.split(" (")[0])
        out.print(table)
        return
    try:
        c = get_config(name)
    except ModelError as e:
        fail(str(e))
    keys = ("name", "description", "input_size", "channels", "mean", "std", "classes",
            "va_method", "crop", "weights", "licence", "training_data", "card")
    if c.kind == "embedding":
        keys = ("name", "kind", "description", "input_size", "channels", "mean", "std",
                "embedding_size", "crop", "weights", "licence", "training_data", "card")
    for key in keys:
        out.print(f"[bold]{key}[/]: {getattr(c, key)}", highlight=False)
    card = Path(__file__).resolve().parent.parent / c.card
    if c.card and card.exists():
        out.print(Markdown(card.read_text()))


# --- cage train / cage evaluate (issue 5; code in train/) ---------------------------------

@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Argument(
        metavar="DATA",
        help="Training data: a CSV (image path, expression index, valence, arousal), a folder "
             "of class folders, or an AffectNet folder (images/, annotations/). See "
             "docs/training.md.", show_default=False)],
    out: Annotated[str, typer.Option(
        "-o", "--out", metavar="DIR",
        help="Run folder: last.pt, best.pt, metrics.csv, metrics.jsonl.")] = "runs/cage",
    val: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DATA", help="Validation data (same layouts); picks best.pt.",
        show_default="none: best.pt by training loss")] = None,
    images: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DIR", help="Folder that CSV image paths are relative to.",
        show_default="the CSV's folder")] = None,
    val_images: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DIR", help="The same for --val.", show_default="the --val CSV's folder")] = None,
    task: Annotated[str, typer.Option(
        metavar="combined|discrete|va",
        help="combined: expressions + valence/arousal (CE + alpha*MSE). discrete: expressions "
             "only. va: valence/arousal only (CCC + beta*MSE).")] = "combined",
    classes: Annotated[int, typer.Option(
        metavar="8|7", help="8 (AffectNet-8) or 7 (no contempt).")] = 8,
    backbone: Annotated[str, typer.Option(
        metavar="NAME", help="maxvit_t (torchvision, the paper's) or any timm model name.",
        rich_help_panel="Model")] = "maxvit_t",
    input_size: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="PX", help="Input size for timm backbones.", show_default="the backbone's",
        rich_help_panel="Model")] = None,
    pretrained_file: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Local ImageNet weights for the backbone (nothing is downloaded).",
        show_default="none: random initialisation", rich_help_panel="Model")] = None,
    init: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Start from the matching tensors of a checkpoint or state dict.",
        rich_help_panel="Model")] = None,
    epochs: Annotated[int, typer.Option(
        metavar="N", help="Passes over the training data.",
        rich_help_panel="Optimisation")] = 20,
    batch_size: Annotated[int, typer.Option(
        metavar="N", help="Images per optimiser step.", rich_help_panel="Optimisation")] = 128,
    lr: Annotated[float, typer.Option(
        metavar="LR", help="AdamW learning rate (cosine schedule).",
        rich_help_panel="Optimisation")] = 5e-5,
    weight_decay: Annotated[float, typer.Option(
        metavar="WD", help="AdamW weight decay.", rich_help_panel="Optimisation")] = 0.01,
    alpha: Annotated[float, typer.Option(
        metavar="A", help="combined: weight of the VA MSE.",
        rich_help_panel="Optimisation")] = 5.0,
    beta: Annotated[float, typer.Option(
        metavar="B", help="va: weight of the MSE next to CCC.",
        rich_help_panel="Optimisation")] = 3.0,
    class_weights: Annotated[str, typer.Option(
        metavar="WEIGHTS",
        help="paper (the authors' AffectNet weights) | auto (inverse frequency) | none | "
             "comma-separated list.", rich_help_panel="Optimisation")] = "paper",
    augment: Annotated[bool, typer.Option(help="The paper's augmentation.",
                                          rich_help_panel="Optimisation")] = True,
    balance: Annotated[bool, typer.Option(help="Subsample classes to the smallest one.",
                                          rich_help_panel="Optimisation")] = False,
    crop: Annotated[bool, typer.Option(
        help="Images are raw photos: crop the largest MTCNN face first.")] = False,
    monitor: Annotated[str, typer.Option(
        metavar="METRIC",
        help="best.pt by validation loss | f1 | accuracy | ccc | rmse.")] = "loss",
    max_steps: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="Stop after this many optimiser steps in total.",
        show_default="no limit")] = None,
    workers: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="Data loader processes.", show_default="min(8, CPUs)",
        rich_help_panel="Performance")] = None,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps.",
        rich_help_panel="Performance")] = "auto",
    amp: Annotated[Optional[bool], typer.Option(  # noqa: UP045
        "--amp/--no-amp", help="Mixed precision.", show_default="on for CUDA",
        rich_help_panel="Performance")] = None,
    seed: Annotated[int, typer.Option(
        metavar="N", help="Seed for initialisation, shuffling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress output.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Train a CAGE model (MaxViT-T + expression/valence/arousal head) with the paper's recipe.
    Walkthrough: docs/training.md.

    Examples:

    ```
    cage train dataset/train.csv --val dataset/val.csv -o runs/mine
    cage train AffectNet/train_set --val AffectNet/val_set --pretrained-file maxvit_t.pth
    ```
    """
    from .models import ModelError
    from .train.datasets import DataError, user_message
    from .train.loop import TrainError, TrainOptions, train

    opts = TrainOptions(
        data=data, out=out, val=val, images=images, val_images=val_images, task=task,
        classes=classes, backbone=backbone, input_size=input_size,
        pretrained_file=pretrained_file, init=init, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, alpha=alpha, beta=beta, class_weights=class_weights,
        augment=augment, balance=balance, crop=crop, monitor=monitor, max_steps=max_steps,
        workers=workers, device=device, amp=amp, seed=seed, resume=resume, quiet=quiet)
    try:
        train(opts)
    except (DataError, ModelError, TrainError) as e:
        fail(user_message(e))
    except KeyboardInterrupt:
        fail(f"interrupted; continue with the same command plus --resume (from {out}/last.pt)",
             130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)


@app.command("evaluate")
def evaluate_cmd(
    data: Annotated[str, typer.Argument(
        metavar="DATA",
        help="Labelled faces: a CSV (such as the labels.csv of `cage export`), a folder of "
             "class folders or an AffectNet folder.", show_default=False)],
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="MODEL", help="Model name from `cage models`.",
        show_default=f"{DEFAULT_MODEL}; with --weights, the checkpoint's model")] = None,
    weights: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Local weights: a state dict or a `cage train` checkpoint.",
        show_default="the model's bundled weights")] = None,
    json_out: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--json", metavar="FILE",
        help="Write all metrics as JSON here ('-' = stdout, no table).")] = None,
    predictions: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE", help="Write per-image predictions to this CSV.")] = None,
    images: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DIR", help="Folder that CSV image paths are relative to.",
        show_default="the CSV's folder")] = None,
    crop: Annotated[bool, typer.Option(
        help="Images are raw photos: crop the largest MTCNN face (else: pre-cropped faces).")
    ] = False,
    batch_size: Annotated[int, typer.Option(
        metavar="N", help="Images per model call.", rich_help_panel="Performance")] = 32,
    workers: Annotated[int, typer.Option(
        metavar="N", help="Data loader processes.", rich_help_panel="Performance")] = 0,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps.",
        rich_help_panel="Performance")] = "auto",
    precision: Annotated[str, typer.Option(
        metavar="PRECISION", help="auto | fp32 | fp16 | bf16.",
        rich_help_panel="Performance")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Accuracy, precision/recall/F1, confusion matrix and valence/arousal MSE/MAE/RMSE/CCC.

    Examples:

    ```
    cage evaluate dataset/labels.csv             # a `cage export` dataset, default model
    cage evaluate AffectNet/val_set --weights runs/affectnet8/best.pt --json val.json
    ```
    """
    from .models import ModelError
    from .train.datasets import DataError, user_message
    from .train.evaluate import evaluate, print_report, write_json

    if batch_size < 1:
        fail("--batch-size must be at least 1")
    if model is None and weights is None:
        model = DEFAULT_MODEL
        err.print(f"cage: evaluating the default model, {model} (choose one with --model)",
                  markup=False, highlight=False, soft_wrap=True)
    try:
        result = evaluate(data, model, weights, images=images, crop=crop, batch_size=batch_size,
                          device=device, precision=precision, workers=workers,
                          predictions=predictions, console=err)
    except (DataError, ModelError) as e:
        fail(user_message(e))
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    if json_out != "-":
        print_report(result, _stdout())
    if json_out:
        try:
            write_json(result, json_out)
        except OSError as e:
            fail(f"cannot write {json_out}: {e.strerror or e}")


# --- cage render / plot / summary (issue 8; code in view/) --------------------------------

ANNOTATIONS_HELP = ("Output of `cage annotate`: .parquet, a dataset folder, .jsonl or .csv; a "
                    "local path or a URI (s3://bucket/out/).")

@app.command("render")
def render_cmd(
    annotations: Annotated[str, typer.Argument(
        metavar="ANNOTATIONS",
        help=ANNOTATIONS_HELP,
        show_default=False)],
    source: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="PATH",
        help="The photo/video to draw on, or a folder of them (matched to the rows' source by "
             "path).", show_default="the paths recorded in the annotations")] = None,
    output: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "-o", "--output", metavar="PATH",
        help="Output file (photo: same kind as -o's extension; video: .mp4), or a folder "
             "(needed for several sources).",
        show_default="a folder beside ANNOTATIONS: faces.parquet -> faces_rendered/")] = None,
    hold: Annotated[float, typer.Option(
        metavar="SECONDS",
        help="Videos: a frame that was not sampled shows the last sampled frame's faces if "
             "those are at most this many seconds older; 0 = draw sampled frames only.")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Draw boxes, landmarks, label + probability and a valence/arousal marker onto copies of
    the annotated photos and videos (H.264 MP4, same size, frames and timing). The sources are
    never modified. Exit codes: 0 all rendered, 1 some failed, 2 usage error.

    Examples:

    ```
    cage render faces.parquet                    # into faces_rendered/
    cage render faces.parquet --source examples/short_clip.mp4 -o clip_faces.mp4
    ```
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .view.render import render
    from .view.summary import VizError

    if output is None:
        output = _beside(annotations, "_rendered") + "/"
    bar = Progress(TextColumn("[bold]rendering[/] {task.description}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("frames"), console=err, transient=True,
                   disable=quiet or not err.is_terminal)
    current: list = [None, None]  # the job and its progress task

    def log(line: str) -> None:
        if not quiet or line.startswith("cage: error"):
            bar.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def on_frame(job, i: int, n: int) -> None:
        if current[0] is not job:
            if current[1] is not None:
                bar.remove_task(current[1])
            current[:] = [job, bar.add_task(Path(job.path).name, total=n or None)]
        if i % 10 == 0 or i == n:
            bar.update(current[1], completed=i)

    try:
        with bar:
            done, failures = render(annotations, source, output, overwrite=overwrite,
                                    hold=hold, log=log, on_frame=on_frame)
    except VizError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted (finished outputs are kept; partial ones were removed)", 130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    if failures:
        raise typer.Exit(1)


@app.command("plot")
def plot_cmd(
    annotations: Annotated[str, typer.Argument(
        metavar="ANNOTATIONS",
        help=ANNOTATIONS_HELP,
        show_default=False)],
    output: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "-o", "--output", metavar="FILE", help="PLOT.png, PLOT.svg or PLOT.pdf.",
        show_default="ANNOTATIONS with .png: faces.parquet -> faces.png")] = None,
    source: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="SOURCE",
        help="Plot only this source (a path or file name from the annotations).",
        show_default="all sources")] = None,
    title: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="TEXT", help="Figure title.",
        show_default="the annotations' or --source's file name")] = None,
    tracks: Annotated[int, typer.Option(
        metavar="N", help="Videos with track ids: timelines of the N longest tracks, one line "
        "per track (with person ids: per person; 0 = the mean over each frame's faces "
        "instead).")] = 5,
    thumbnails: Annotated[bool, typer.Option(
        help="A face thumbnail beside each track's or person's line and strip, cut from the "
             "source.")] = True,
    root: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DIR", help="Folder that relative source paths are resolved against "
        "(thumbnails).", show_default="the current folder, then the annotations' folder")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing plot.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Plot the faces on the valence/arousal circumplex with the AffectNet class centroids,
    the expression distribution and, per video, valence and arousal over time: one line per
    track (the --tracks longest; with person ids one per person) and each one's label, with
    a face thumbnail, or for outputs without track ids the mean over each frame's faces and
    the top class probabilities.

    Examples:

    ```
    cage plot faces.parquet                      # writes faces.png
    cage plot faces.parquet --source interview.mp4 --tracks 8 -o interview.svg
    ```
    """
    from .annotation.io.store import is_uri, uri_path
    from .view import plot as plots
    from .view.summary import VizError, load_annotations

    chosen = output is None
    if output is None:
        output = _beside(annotations, ".png")
    try:
        out = plots.check_output(output, overwrite)
        table, _ = load_annotations(annotations)
        table = plots.select_source(table, source, annotations)
        n_videos, most = len(plots.video_sources(table)), plots.MAX_TIMELINES
        if n_videos > most:
            err.print(f"cage: note: timelines for the first {most} of {n_videos} videos; "
                      "use --source to pick one", markup=False, highlight=False)
        if tracks < 0:
            raise VizError("--tracks must be 0 or more")
        roots = [Path(root)] if root else [Path.cwd()] + (
            [] if is_uri(annotations) else [Path(annotations).resolve().parent])
        fig = plots.build_figure(table, title=title or (source and Path(source).name)
                                 or Path(uri_path(annotations) if is_uri(annotations)
                                         else annotations).name, tracks=tracks,
                                 roots=roots, thumbnails=thumbnails,
                                 log=lambda line: err.print(f"cage: note: {line}", markup=False,
                                                            highlight=False, soft_wrap=True))
        plots.save_figure(fig, out)
        if chosen:
            err.print(f"cage: wrote {out}", markup=False, highlight=False, soft_wrap=True)
    except VizError as e:
        fail(str(e), e.exit_code)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror or e}", 1)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)


@app.command("summary")
def summary_cmd(
    annotations: Annotated[str, typer.Argument(
        metavar="ANNOTATIONS",
        help=ANNOTATIONS_HELP,
        show_default=False)],
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print JSON on stdout instead of tables (with every track).")] = False,
    tracks: Annotated[int, typer.Option(
        metavar="N", help="Videos with track ids: list the N longest tracks (and persons, "
        "with person ids) of each (0 = none).")] = 10,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Per source: frames with faces, faces, dominant expression, mean valence and arousal;
    per video its tracks (one per person): frames, first and last time, dominant expression,
    mean valence and arousal; then the files that failed in the run (from the Parquet run
    metadata).

    Examples:

    ```
    cage summary faces.parquet
    cage summary faces.parquet --tracks 20
    cage summary out_dir/ --json | jq '.sources'
    ```
    """
    import json

    from .annotation.io.store import redact
    from .view.summary import VizError, load_annotations, print_summary, summarize

    if tracks < 0:
        fail("--tracks must be 0 or more")
    shown = redact(annotations)  # a URI without the credentials it may carry
    try:
        table, info = load_annotations(annotations)
        result = summarize(table, info)
    except VizError as e:
        fail(str(e), e.exit_code)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    if json_out:
        typer.echo(json.dumps({"annotations": shown, **result}, indent=2))
    else:
        print_summary(result, _stdout(), title=f"cage summary: {shown}",
                      max_tracks=tracks)


@app.command("persons")
def persons_cmd(
    annotations: Annotated[list[str], typer.Argument(
        metavar="ANNOTATIONS",
        help="One or more outputs of `cage annotate --persons` (files, folders or URIs).",
        show_default=False)],
    output: Annotated[str, typer.Option(
        "-o", "--output", metavar="PATH",
        help="The persons table: .parquet or .csv (source, frame_index, face_index, "
             "person), one row per face; join it onto the annotation rows.")] = ...,
    threshold: Annotated[float, typer.Option(
        metavar="DIST",
        help="Persons of different sources whose descriptors are closer than this are one "
             "person (lower: fewer wrong merges, more splits).")] = DEFAULT_THRESHOLD,
    overwrite: Annotated[bool, typer.Option(help="Replace PATH if it exists.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Link persons across sources: one run-wide `person` for the same person in many photos
    or videos (the same participants in several sessions), from the descriptors that
    `cage annotate --persons` stored. Persons of one source stay apart (that run kept them
    apart). Prints each person's faces and sources.

    Examples:

    ```
    cage annotate sessions/ --persons -o faces.parquet
    cage persons faces.parquet -o persons.parquet
    duckdb -c "select p.person, avg(f.valence) from 'faces.parquet' f join
      'persons.parquet' p using (source, frame_index, face_index) group by 1"
    ```
    """
    from .view.persons import PersonsError, link_outputs, print_persons

    if threshold <= 0:
        fail("--threshold must be positive")
    try:
        table = link_outputs(annotations, output, threshold, overwrite)
    except PersonsError as e:
        fail(str(e), e.exit_code)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    print_persons(table, _stdout(), output)


# --- cage export (issue 9; code in export/) -----------------------------------------------

@app.command("export")
def export_cmd(
    annotations: Annotated[str, typer.Argument(
        metavar="ANNOTATIONS",
        help="Output of `cage annotate` (.parquet, dataset folder, .jsonl or .csv; a local "
             "path or a URI). With --apply-review: the DATASET_DIR to update.",
        show_default=False)],
    output: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "-o", "--output", metavar="DIR",
        help="DATASET_DIR to create: images/, one labels CSV per split, manifest, "
             "export.json.",
        show_default="a folder beside ANNOTATIONS: faces.parquet -> faces_dataset/")] = None,
    size: Annotated[int, typer.Option(
        metavar="PX", help="Crop side in pixels.", rich_help_panel="Crops")] = 224,
    margin: Annotated[float, typer.Option(
        metavar="M",
        help="Square around the box's centre, side = longer box side x (1 + 2 x margin); "
             "black outside the frame.", rich_help_panel="Crops")] = 0.2,
    image_format: Annotated[str, typer.Option(
        metavar="jpeg|png", help="Crop image format.", rich_help_panel="Crops")] = "jpeg",
    jpeg_quality: Annotated[int, typer.Option(
        metavar="Q", help="JPEG quality (1-100).", rich_help_panel="Crops")] = 95,
    manifest_format: Annotated[str, typer.Option(
        metavar="csv|parquet", help="Manifest file format.", rich_help_panel="Crops")] = "csv",
    min_det_score: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="P", help="Smallest detector score (whole-image rows have none and pass).",
        show_default="any", rich_help_panel="Selection")] = None,
    min_face: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="PX", help="Smallest face: shorter box side in pixels.", show_default="any",
        rich_help_panel="Selection")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="P", help="Keep faces whose top class probability is at least P.",
        show_default="any", rich_help_panel="Selection")] = None,
    max_confidence: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="P",
        help="Keep faces whose top class probability is at most P (uncertain ones, for "
             "review).", show_default="any", rich_help_panel="Selection")] = None,
    classes: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="LABELS", help="Only these machine labels, e.g. happy,sad.",
        show_default="all", rich_help_panel="Selection")] = None,
    per_class: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="At most N faces per label (seeded random sample).",
        show_default="all", rich_help_panel="Selection")] = None,
    per_track: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="Videos: at most N faces per track (person), the largest and "
        "clearest ones that differ most in expression and time (docs/prelabel.md).",
        show_default="all", rich_help_panel="Selection")] = None,
    per_person: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="N", help="At most N faces per person (annotate --persons), picked like "
        "--per-track; with --persons per run-wide person, over all its sources.",
        show_default="all", rich_help_panel="Selection")] = None,
    persons: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="PERSONS", help="A `cage persons` table: adds a person column, and --split "
        "splits by run-wide person (none in two splits; a source's persons may part).",
        show_default="none", rich_help_panel="Selection")] = None,
    every_k_frames: Annotated[Optional[int], typer.Option(  # noqa: UP045
        metavar="K",
        help="Videos: keep a frame only if it is K or more frames after the last kept one.",
        show_default="every frame", rich_help_panel="Selection")] = None,
    min_gap_s: Annotated[Optional[float], typer.Option(  # noqa: UP045
        metavar="SECONDS",
        help="Videos: keep a frame only if it is this many seconds or more after the last "
             "kept one.", show_default="no gap", rich_help_panel="Selection")] = None,
    split: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="SPLITS", help="Splits by source, e.g. train=0.8,val=0.1,test=0.1.",
        show_default="no split: one labels.csv", rich_help_panel="Selection")] = None,
    seed: Annotated[int, typer.Option(
        metavar="N", help="Seed for --per-class and --split.",
        rich_help_panel="Selection")] = 0,
    review_csv: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE",
        help="Also write a review sheet here: crop, machine label, confidence, an empty "
             "reviewed_label column.", rich_help_panel="Review")] = None,
    apply_review: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE",
        help="Fold these answers (a filled-in review sheet, or the review-answers.csv of "
             "`cage review`'s page) into the dataset given as the argument (reviewed_label: "
             "an expression, ok or reject).", rich_help_panel="Review")] = None,
    root: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="DIR", help="Folder that relative source paths are resolved against.",
        show_default="the current folder, then the annotations' folder")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing DATASET_DIR (only a `cage export` one) / review sheet.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="No progress bar and no summary.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Cut the annotated faces into a training-ready dataset (square crops + labels CSVs that
    `cage train` / `cage evaluate` read + a manifest), with machine labels to review.
    Walkthrough: docs/prelabel.md.

    Exit codes: 0 done, 1 some sources missing or unreadable (skipped), 2 usage error.

    Examples:

    ```
    cage export faces.parquet                    # into faces_dataset/
    cage export faces.parquet -o dataset/ --split train=0.8,val=0.1,test=0.1
    cage export faces.parquet -o review/ --max-confidence 0.6 --review-csv review.csv
    cage export faces.parquet -o people/ --per-track 3    # a few crops per track
    cage export faces.parquet --persons persons.csv --split train=0.8,test=0.2
    cage export review/ --apply-review review.csv
    ```
    """
    from .export import prelabel as ex
    from .export import review

    if apply_review is not None:
        if output is not None:
            fail("--apply-review updates the DATASET_DIR given as the argument; drop -o")
        try:
            result = review.apply_review(apply_review, annotations)
        except ex.ExportError as e:
            fail(str(e))
        except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
            _debug_guard(debug, e)
        if not quiet:
            review.print_review_summary(err, result)
        return
    if output is None:
        output = _beside(annotations, "_dataset")
    try:
        opts = ex.ExportOptions(
            size=size, margin=margin, image_format=image_format, jpeg_quality=jpeg_quality,
            manifest_format=manifest_format, min_det_score=min_det_score, min_face=min_face,
            min_confidence=min_confidence, max_confidence=max_confidence,
            classes=ex.parse_classes(classes) if classes is not None else None,
            per_class=per_class, per_track=per_track, per_person=per_person,
            persons=persons, every_k_frames=every_k_frames,
            min_gap_s=min_gap_s,
            split=ex.parse_split(split) if split is not None else None, seed=seed,
            review_csv=review_csv, root=root, overwrite=overwrite)
        ex.check_options(opts)
        progress = ex.ExportProgress(err, enabled=not quiet and err.is_terminal)
        with progress:
            summary = ex.export(annotations, output, opts, on_start=progress.start,
                                on_advance=progress.advance, log=progress.log)
    except ex.ExportError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written (run the command again)", 130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        _debug_guard(debug, e)
    if not quiet:
        ex.print_summary(err, summary)
    warning = ex.empty_split_warning(summary)
    if warning:
        err.print(warning, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)



@app.command("review")
def review_cmd(
    dataset: Annotated[str, typer.Argument(
        metavar="DATASET_DIR", help="A folder written by `cage export`.", show_default=False)],
    open_page: Annotated[bool, typer.Option(
        "--open", help="Also open the page in the default web browser.")] = False,
) -> None:
    """Write DATASET_DIR/review.html, a page to check the machine labels by looking at the
    crops and answering with the keyboard. Walkthrough: docs/prelabel.md.

    Its "Save answers" downloads review-answers.csv, for `cage export --apply-review`. One
    file, nothing fetched from the network; it shows the crops by relative paths, so the
    folder can be zipped and sent to a reviewer.

    Examples:

    ```
    cage review ds/ --open
    cage export --apply-review ~/Downloads/review-answers.csv ds/
    ```
    """
    from .export.prelabel import ExportError
    from .export.review_page import write_review_page

    try:
        page = write_review_page(dataset)
    except ExportError as e:
        fail(str(e))
    typer.echo(str(page))
    if open_page:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            err.print("cage: no web browser found; open the file above in one",
                      markup=False, highlight=False, soft_wrap=True)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
