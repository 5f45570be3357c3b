"""Scaling: a local run against `--ray` with 1 and 2 CPU workers, and Ray's cost per input.

    python benchmarks/scaling.py                     # about 15 minutes on 2 CPU cores
    python benchmarks/scaling.py --quick             # smoke run
    python benchmarks/scaling.py --baseline /work/main   # also time another checkout's local path

Every case runs in its own Python process through ``cage_cli.annotate_to`` (what `cage annotate`
runs), after a warm-up run in the same process (model loading, the networks' first calls; with
Ray: starting Ray and its worker processes, which load the model once each). Only the measured
run is timed. Cases, interleaved round by round (``--repeats``, median reported):

- workload "media": the shared media folder, at most ``--max-frames`` frames per video
  (interview.mp4 1080p, short_clip.mp4, 7 photos up to 2048 px);
- workload "tiny photos": ``--tiny`` links to no_faces.jpg (148x199), where Ray's cost per
  task and per input dominates.

For each: local with 1 and 2 threads (the default), and Ray (``ray.init(num_cpus=N)``, a local
cluster) with 1 and 2 CPU workers, one task per video or batch of photos, one thread each.
``--baseline PATH`` adds a local run of the checkout at PATH (same workload, same process
setup), to show the local path is as fast as before this change.

Besides wall time, each case records the CPU time of its whole process tree (the driver, and
with Ray the local cluster's GCS, raylet, workers and actors): on a shared machine, wall time
depends on how many threads compete for the cores, CPU time much less. Ray's cost per input is
the CPU time per input of Ray with 1 worker minus that of a local run with 1 thread (the same
compute). Prints a markdown table and writes benchmarks/results/scaling.json and scaling.md.
The load average before and after each case is recorded: this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEDIA = ROOT.parent / "shared" / "media"
RESULTS = HERE / "results"


def child(case: dict) -> dict:
    """One case: warm up, then time one annotate_to run; returns its numbers."""
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions
    from cage_cli.annotation.running.runner import annotate_to

    options = AnnotateOptions(sampling=Sampling(max_frames=case["max_frames"]))
    run = RunOptions(threads=case["threads"])
    extra: dict = {}
    t0 = time.perf_counter()
    if case["ray"]:
        import logging

        import ray

        from cage_cli.annotation.running.cluster import RayOptions

        ray.init(num_cpus=case["ray"], include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        extra["ray"] = RayOptions(segment_frames=case.get("segment_frames",
                                                          RayOptions.segment_frames))
    tmp = Path(case["tmp"])
    # Warm-up: on as many inputs as there are workers, so that every worker loads the model.
    warm = [str(MEDIA / "single_face.jpg")] * 1 + [str(MEDIA / "multiface.jpg")]
    annotate_to(warm, str(tmp / "warm") + "/", options, run, log=lambda _: None, **extra)
    startup = time.perf_counter() - t0
    cpu0 = tree_cpu()
    s = annotate_to(case["inputs"], str(tmp / "out") + "/", options, run, log=lambda _: None,
                    **extra)
    cpu1 = tree_cpu()
    if case["ray"]:
        ray.shutdown()
    cpu = sum(t - cpu0.get(pid, 0.0) for pid, t in cpu1.items())
    return {"seconds": s.seconds - s.load_seconds, "frames": s.frames, "faces": s.faces,
            "files": s.files_ok + s.files_failed, "startup_s": startup, "cpu_s": cpu}


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) so far of this process and all its descendants (with Ray:
    the local cluster's GCS, raylet, workers and actors)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def run_case(case: dict, pythonpath: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = json.dumps({**case, "tmp": tmp})
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        load0 = os.getloadavg()[0]
        p = subprocess.run([sys.executable, __file__, "--child", spec], env=env,
                           capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"case {case['label']} failed:\n{p.stderr[-3000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        out["load_before"], out["load_after"] = load0, os.getloadavg()[0]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="few frames, one round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=30)
    ap.add_argument("--tiny", type=int, default=48, help="tiny photos in the overhead workload")
    ap.add_argument("--baseline", type=Path, help="another checkout: time its local path too")
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.repeats, args.max_frames, args.tiny = 1, 4, 8

    tiny_dir = Path(tempfile.mkdtemp(prefix="cage-tiny-"))
    for i in range(args.tiny):
        (tiny_dir / f"tiny_{i:04d}.jpg").symlink_to(MEDIA / "no_faces.jpg")
    workloads = {"media": [str(MEDIA)], "tiny photos": [str(tiny_dir)]}
    cases = [("local, 1 thread", 0, 1), ("local, 2 threads (default)", 0, None),
             ("ray, 1 CPU worker", 1, None), ("ray, 2 CPU workers", 2, None)]
    if args.baseline:
        cases.insert(2, (f"local, 2 threads, baseline {args.baseline}", 0, None))
    runs: dict[str, list[dict]] = {}
    try:
        for r in range(args.repeats):
            for wname, inputs in workloads.items():
                for label, ray_cpus, threads in cases:
                    path = args.baseline if "baseline" in label else ROOT
                    case = {"label": label, "inputs": inputs, "ray": ray_cpus,
                            "threads": threads, "max_frames": args.max_frames}
                    res = run_case(case, path)
                    runs.setdefault(f"{wname}|{label}", []).append(res)
                    print(f"round {r + 1} {wname:12s} {label:40s} {res['seconds']:7.2f} s "
                          f"(load {res['load_before']:.1f})", file=sys.stderr)
    finally:
        for p in tiny_dir.iterdir():
            p.unlink()
        tiny_dir.rmdir()

    table = {}
    for key, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        med["frames_per_s"] = med["frames"] / med["seconds"]
        med["cpu_ms_per_input"] = 1000 * med["cpu_s"] / med["files"]
        med["cpu_ms_per_frame"] = 1000 * med["cpu_s"] / med["frames"]
        med["rounds"] = [x["seconds"] for x in rs]
        table[key] = med
    for wname in workloads:
        base = table[f"{wname}|local, 1 thread"]["seconds"]
        ray1 = table[f"{wname}|ray, 1 CPU worker"]
        for key, med in table.items():
            if key.startswith(wname + "|"):
                med["speedup_vs_local_1_thread"] = base / med["seconds"]
        # Ray's cost per input: CPU time of the whole process tree, 1 Ray worker vs 1 local
        # thread (the same compute; wall time on a shared machine is less reliable).
        local1 = table[f"{wname}|local, 1 thread"]
        ray1["overhead_cpu_ms_per_input"] = ray1["cpu_ms_per_input"] - local1["cpu_ms_per_input"]
    results = {"environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "machine": platform.machine(), "date": time.strftime("%F %T"),
                               "repeats": args.repeats, "max_frames": args.max_frames,
                               "tiny_photos": args.tiny},
               "cases": table}
    md = render(results)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)


def render(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Scaling ({env['date']}, {env['cpus']} CPUs, median of {env['repeats']} "
             f"rounds, videos at most {env['max_frames']} frames, {env['tiny_photos']} tiny "
             "photos)", "",
             "| workload | case | files | frames | seconds | frames/s | x local 1 thread | "
             "CPU ms/frame | Ray CPU ms per input | startup s | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, m in results["cases"].items():
        w, label = key.split("|")
        over = m.get("overhead_cpu_ms_per_input")
        lines.append(
            f"| {w} | {label} | {m['files']:.0f} | {m['frames']:.0f} | {m['seconds']:.2f} | "
            f"{m['frames_per_s']:.2f} | {m['speedup_vs_local_1_thread']:.2f} | "
            f"{m['cpu_ms_per_frame']:.0f} | {'' if over is None else f'{over:.0f}'} | "
            f"{m['startup_s']:.1f} | {m['load_before']:.1f} -> {m['load_after']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
