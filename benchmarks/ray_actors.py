"""``--ray`` with classification in the tasks vs on a Classifier actor, on a local Ray with CPUs
only (the actor on a CPU too): what the pool costs and how it batches, not a GPU number.

    python benchmarks/ray_actors.py [--cpus 2] [--rounds 2] [--max-frames 30]
        [--out benchmarks/results/ray_actors.json]

Annotates the shared media folder (videos cut at --max-frames) through ``RayPipeline`` on one
local Ray, alternating the two layouts; the first run of each warms the workers (model
loading) and is not counted. Reports wall seconds (median) and the actor's requests, model
calls and faces. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"


def main() -> None:
    import ray

    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import discover
    from cage_cli.annotation.running.cluster import RayOptions, RayPipeline
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-frames", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ray_actors.json"))
    args = ap.parse_args()

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    options = AnnotateOptions(sampling=Sampling(max_frames=args.max_frames))
    files = discover([str(MEDIA)]).files
    cases = {"in the tasks": False, "on 1 CPU actor": True}
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    stats: dict[str, list] = {k: [] for k in cases}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds + 1):
        for name, on_actors in cases.items():
            pipeline = RayPipeline(options, RunOptions(),
                                   RayOptions(classify_actors=on_actors))
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                pieces = list(pipeline.run(files, Path(out), {}))
            assert not [p.error for p in pieces if p.error]
            if r:  # round 0 warms the workers
                seconds[name].append(time.perf_counter() - start)
                stats[name].append(pipeline.actor_stats)
    load.append(os.getloadavg()[0])
    ray.shutdown()
    result = {"cpus": args.cpus, "files": len(files), "max_frames": args.max_frames,
              "load_avg": load, "seconds": seconds, "actor_stats": stats}
    print(f"{len(files)} files, videos cut at {args.max_frames} frames, Ray with {args.cpus} "
          f"CPUs; load average {load[0]:.1f} -> {load[1]:.1f}")
    print("| classification | seconds (median) | actor requests | model calls | faces |")
    print("|---|---|---|---|---|")
    for name in cases:
        s = stats[name][-1][0] if stats[name][-1] else {}
        print(f"| {name} | {statistics.median(seconds[name]):.2f} | "
              f"{s.get('requests', '')} | {s.get('calls', '')} | {s.get('faces', '')} |")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
