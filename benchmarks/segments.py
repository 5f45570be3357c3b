"""Long videos in segments (``--ray-segment-frames``): one video, Ray with 1 and 2 CPU workers,
whole (one task) or in segments (one task per segment, then the tracking/commit task).

    python benchmarks/segments.py                  # about 10 minutes on 2 CPU cores
    python benchmarks/segments.py --quick          # smoke run

The cases run through benchmarks/scaling.py's harness (each in its own process, after a
warm-up; wall time and the CPU time of the whole process tree), interleaved round by round,
median reported. The cost of segments is the CPU time of the split run minus the unsplit one
with 1 worker (the same compute); their gain is the wall time with 2 workers, where a whole
video keeps one worker busy and leaves the other idle. Writes benchmarks/results/segments.json
and segments.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import MEDIA, RESULTS, ROOT, run_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few frames, one round")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-frames", type=int, default=90)
    ap.add_argument("--segments", type=int, default=3, help="segments per video when split")
    ap.add_argument("--video", type=Path, default=MEDIA / "interview.mp4")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.max_frames = 1, 15
    size = -(-args.max_frames // args.segments)
    cases = [(f"ray, {n} CPU worker{'s' * (n > 1)}, {how}", n, seg)
             for n in (1, 2) for how, seg in (("whole", None), (f"{args.segments} segments",
                                                                 size))]
    runs: dict[str, list[dict]] = {}
    for r in range(args.repeats):
        for label, cpus, seg in cases:
            case = {"label": label, "inputs": [str(args.video)], "ray": cpus, "threads": None,
                    "max_frames": args.max_frames, "segment_frames": seg}
            res = run_case(case, ROOT)
            runs.setdefault(label, []).append(res)
            print(f"round {r + 1} {label:40s} {res['seconds']:7.2f} s "
                  f"(load {res['load_before']:.1f})", file=sys.stderr)
    table = {}
    for label, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        med["rounds"] = [x["seconds"] for x in rs]
        table[label] = med
    results = {"environment": {"cpus": os.cpu_count(), "date": time.strftime("%F %T"),
                               "repeats": args.repeats, "max_frames": args.max_frames,
                               "segments": args.segments, "video": args.video.name},
               "cases": table}
    env = results["environment"]
    lines = [f"# Segments ({env['date']}, {env['cpus']} CPUs, median of {env['repeats']} "
             f"rounds, {env['video']} at {env['max_frames']} frames)", "",
             "| case | frames | faces | seconds | CPU s | load avg |", "|---|---|---|---|---|---|"]
    for label, m in table.items():
        lines.append(f"| {label} | {m['frames']:.0f} | {m['faces']:.0f} | {m['seconds']:.2f} | "
                     f"{m['cpu_s']:.1f} | {m['load_before']:.1f} -> {m['load_after']:.1f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = RESULTS / "segments.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
