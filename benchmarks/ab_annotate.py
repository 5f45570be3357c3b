"""Two checkouts of cage side by side: `cage annotate` on each input, whole process.

    python benchmarks/ab_annotate.py OTHER_REPO [--inputs interview,short_clip] [--rounds 3]
        [--args "--persons"] [--out benchmarks/results/ab_annotate.json]

Runs ``python -m cage_cli annotate MEDIA/NAME.mp4 -o ...`` with PYTHONPATH set to this
checkout ("this") and to OTHER_REPO ("other"), in interleaved rounds, under
``/usr/bin/time -v``: wall time, CPU time (user + system) and peak RSS (maximum resident set
size) of the process. Then checks that both wrote the same rows (boxes, landmarks, track ids
exactly, and every column). Prints a table, medians and their ratios (this / other), and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
#: the detection columns compared exactly (the others too, reported apart)
EXACT = ("frame_index", "face_index", "track_id", "face_source", "x1", "y1", "x2", "y2",
         "det_score", "left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x",
         "nose_y", "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y")


def run(repo: Path, video: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "cage_cli", "annotate", str(video),
           "-o", str(out), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=repo)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{repo}: {done.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", done.stderr)[1])
              for kind in ("User", "System"))
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mib": round(rss / 1024),
            "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path)
    ap.add_argument("--inputs", default="interview,short_clip")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--args", default="", help="more `cage annotate` options, e.g. --persons")
    ap.add_argument("--keep", type=Path, help="folder to keep the output tables in")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ab_annotate.json")
    args = ap.parse_args()
    repos = {"other": args.other.resolve(), "this": ROOT}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        for r in range(args.rounds):
            for name in args.inputs.split(","):
                video = MEDIA / f"{name}.mp4"
                order = list(repos.items()) if r % 2 == 0 else list(repos.items())[::-1]
                tables = {}
                for label, repo in order:
                    out = Path(tmp) / f"{label}-{name}-{r}.parquet"
                    res = {"round": r, "input": name, "tree": label,
                           **run(repo, video, out, shlex.split(args.args))}
                    results.append(res)
                    print(res, flush=True)
                    tables[label] = pq.read_table(out)
                a, b = tables["this"], tables["other"]
                same = a.num_rows == b.num_rows and all(a[c].equals(b[c]) for c in EXACT)
                same_all = a.equals(b)
                print(f"round {r} {name}: {a.num_rows} vs {b.num_rows} rows; "
                      f"detections identical: {same}; all columns identical: {same_all}")
                results.append({"round": r, "input": name, "rows": a.num_rows,
                                "detections_identical": same, "all_identical": same_all})
    print("\n| input | tree | wall s | CPU s | peak RSS MiB | load |\n|---|---|---|---|---|---|")
    for res in results:
        if "tree" in res:
            print(f"| {res['input']} | {res['tree']} | {res['wall_s']} | {res['cpu_s']} | "
                  f"{res['peak_rss_mib']} | {res['load']} |")
    medians = {}
    print("\n| input | this / other, wall (medians) | CPU | rows identical |\n|---|---|---|---|")
    for name in args.inputs.split(","):
        m = {tree: {k: statistics.median(r[k] for r in results if r.get("tree") == tree
                                         and r["input"] == name) for k in ("wall_s", "cpu_s")}
             for tree in repos}
        same = all(r["all_identical"] for r in results if r["input"] == name and "rows" in r)
        medians[name] = {**m, "wall_ratio": m["this"]["wall_s"] / m["other"]["wall_s"],
                         "cpu_ratio": m["this"]["cpu_s"] / m["other"]["cpu_s"],
                         "all_identical": same}
        print(f"| {name} | {medians[name]['wall_ratio']:.3f} | {medians[name]['cpu_ratio']:.3f} "
              f"| {same} |")
    args.out.write_text(json.dumps({"other": str(args.other), "args": args.args,
                                    "medians": medians, "results": results}, indent=1))


if __name__ == "__main__":
    main()
