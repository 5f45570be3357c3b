"""CPU time of `cage annotate` by stage (issue 31): run the command in this process with
timers around each stage and print CPU ms per frame.

    python benchmarks/profile_stages.py VIDEO [--persons] [--json OUT] [-- more cage options]

Each timer counts the CPU time of the thread it runs in (``time.thread_time``), exclusive of
the timers inside it, so the stages add up, over all threads, to the process's CPU time less
what no timer covers ("other": the main thread's loop and queues, thread start-up, torch's
own threads). Imports (torch, cage_cli) and model loading are measured apart, as start-up.
Timers cost about a microsecond each: they do not change the picture.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

T0_WALL = time.perf_counter()
T0_CPU = time.process_time()

import torch  # noqa: E402,F401 - timed as start-up

T_TORCH = time.process_time()

import cage_cli.annotation.detection.detect as detect  # noqa: E402
import cage_cli.annotation.detection.mtcnn as mtcnn  # noqa: E402
import cage_cli.annotation.identity.persons as persons  # noqa: E402
import cage_cli.annotation.io.write as write  # noqa: E402
import cage_cli.annotation.running.infer as infer  # noqa: E402
import cage_cli.annotation.running.pipeline as pipeline  # noqa: E402
from cage_cli.cli import app  # noqa: E402

T_IMPORT = time.process_time()

CPU: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_local = threading.local()


def _timed(name: str, fn):  # noqa: ANN001, ANN202
    """``fn`` with an exclusive per-thread CPU timer named ``name``."""
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        start = time.thread_time()
        stack.append(0.0)
        try:
            return fn(*args, **kwargs)
        finally:
            inner = stack.pop()
            spent = time.thread_time() - start
            key = name.replace("*", getattr(_local, "kind", ""))
            CPU[key] += spent - inner
            CALLS[key] += 1
            if stack:
                stack[-1] += spent
    return wrapper


def _timed_gen(name: str, fn):  # noqa: ANN001, ANN202
    """A generator function whose every step is timed as ``name``."""
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        it = fn(*args, **kwargs)
        step = _timed(name, lambda: next(it, _timed_gen))
        while True:
            item = step()
            if item is _timed_gen:
                return
            yield item
    return wrapper


def install() -> None:
    """Wrap the stages (module globals and methods, where the pipeline looks them up)."""
    pipeline.frames = _timed_gen("decode", pipeline.frames)
    detect.downscale = _timed("downscale (detection copy)", detect.downscale)
    mtcnn._integral = _timed("integral image", mtcnn._integral)
    M = mtcnn.MTCNN
    M._pnet = _timed("P-Net pyramid (keyframes)", M._pnet)
    M._pnet_windows = _timed("P-Net windows (between keyframes)", M._pnet_windows)
    M._refine = _timed("R-Net*", M._refine)
    M._output = _timed("O-Net*", M._output)
    glue = _timed("MTCNN glue (NMS, boxes)*", M._detect)

    def kind(self, frames, min_face, windows=None, max_face=None):  # noqa: ANN001, ANN202
        _local.kind = " (keyframes)" if windows is None else " (between keyframes)"
        return glue(self, frames, min_face, windows, max_face)
    M._detect = kind
    D = detect.Detector
    D.relocate = _timed("relocate glue", D.relocate)
    D._filter = _timed("relocate glue", D._filter)
    pipeline.Pipeline._track = _timed("tracking", pipeline.Pipeline._track)
    infer.crop_faces = _timed("crops (classifier)", infer.crop_faces)
    persons.face_crops = _timed("crops (aligned, embedding)", persons.face_crops)
    persons.embed_crops = _timed("embedding", persons.embed_crops)
    pipeline.to_rows = _timed("rows", pipeline.to_rows)
    persons.assign = _timed("persons (linking)", persons.assign)
    pipeline.persons.assign = persons.assign
    W = write.DatasetWriter
    for m in ("add", "commit", "close"):
        setattr(W, m, _timed("writing", getattr(W, m)))
    pipeline.Pipeline.__init__ = _timed("model loading", pipeline.Pipeline.__init__)
    orig = pipeline.Pipeline.__init__

    def init(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        orig(self, *a, **k)
        p = self.model.predict
        self.model.predict = _timed("classification", p)
        if self.embedder is not None:
            self.embedder.embed = _timed("embedding", self.embedder.embed)
    pipeline.Pipeline.__init__ = init


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("video")
    p.add_argument("--persons", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("rest", nargs="*", help="more cage annotate options (after --)")
    a = p.parse_args()
    install()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.parquet"
        args = ["annotate", a.video, "-o", str(out), "--quiet",
                *(["--persons"] if a.persons else []), *a.rest]
        t_run = time.process_time()
        try:
            app(args, standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
        import pyarrow.parquet as pq
        table = pq.read_table(out)
    frames = CALLS["decode"] - 1  # the last step of the decoder ends it
    total = time.process_time()
    wall = time.perf_counter() - T0_WALL
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    counted = sum(v for k, v in CPU.items() if k != "model loading")
    run_cpu = total - t_run - CPU["model loading"]
    stages = dict(sorted(CPU.items(), key=lambda kv: -kv[1]))
    stages.pop("model loading", None)
    stages["other (main loop, queues, threads)"] = run_cpu - counted
    n = max(frames, 1)
    print(f"\n{a.video} {'--persons' if a.persons else ''}: {frames} frames, "
          f"{table.num_rows} rows; load {Path('/proc/loadavg').read_text().split()[:3]}")
    print("| stage | CPU ms / frame | % of per-frame CPU |")
    print("|---|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {1000 * v / n:.2f} | {100 * v / run_cpu:.1f} |")
    print(f"| **per-frame work, all threads** | **{1000 * run_cpu / n:.2f}** | 100 |")
    print(f"| start-up: import torch | {1000 * (T_TORCH - T0_CPU):.0f} ms once | |")
    print(f"| start-up: import cage_cli | {1000 * (T_IMPORT - T_TORCH):.0f} ms once | |")
    print(f"| start-up: model loading | {1000 * CPU['model loading']:.0f} ms once | |")
    print(f"process CPU {total:.2f} s, wall {wall:.2f} s, peak RSS "
          f"{rusage.ru_maxrss / 1024:.0f} MiB")
    if a.json:
        a.json.write_text(json.dumps({
            "video": a.video, "persons": a.persons, "frames": frames, "rows": table.num_rows,
            "cpu_ms_per_frame": {k: 1000 * v / n for k, v in stages.items()},
            "calls": dict(CALLS), "per_frame_cpu_s": run_cpu,
            "import_torch_cpu_s": T_TORCH - T0_CPU, "import_cage_cpu_s": T_IMPORT - T_TORCH,
            "model_loading_cpu_s": CPU["model loading"], "process_cpu_s": total,
            "wall_s": wall, "peak_rss_mib": rusage.ru_maxrss / 1024,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
