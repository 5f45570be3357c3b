"""Issue 31's targets side by side in one run: whole processes, the cases interleaved.

    python benchmarks/speed.py [--rounds 3] [--videos short_clip,interview]
                               [--out benchmarks/results/speed.json]

Per video: the naive loop (benchmarks/throughput.py's: decord, facenet-pytorch's MTCNN on
every frame at full resolution, 2 torch threads, each face classified alone), `cage annotate`
with its defaults, and `cage annotate --persons`. Then one photo (examples/single_face.jpg)
against `python -c "import torch"`. Every case is its own process, timed from start to exit;
its CPU time (user + system) and peak RSS come from ``os.wait4``. Each round runs every case
once, in an order that rotates from round to round; the table gives medians over the rounds
(wall and CPU) and ratios of the medians. The machine is shared: the load average is recorded
before and after each round. The long-video target (10 minutes at 1080p) is not run here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
PHOTO = ROOT / "examples" / "single_face.jpg"


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run(cmd: list[str], cwd: str) -> dict:
    """One process: wall seconds, CPU seconds, peak RSS (MiB), exit status."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = " | ".join(err.read().strip().splitlines()[-2:])
    out = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
           "peak_rss_mib": usage.ru_maxrss / 1024}
    if code:
        out["error"] = f"exit {code}: {tail}"
    return out


def cases(videos: list[str], tmp: str) -> dict[str, list[str]]:
    py = sys.executable
    out: dict[str, list[str]] = {}
    for v in videos:
        path = str(MEDIA / f"{v}.mp4")
        spec = json.dumps({"kind": "naive", "paths": [path], "threads": 2})
        out[f"{v}: naive loop"] = [py, str(ROOT / "benchmarks" / "throughput.py"), "--child", spec]
        cli = [py, "-m", "cage_cli", "annotate", path, "--overwrite", "-q", "-o"]
        out[f"{v}: cage annotate"] = [*cli, f"{tmp}/{v}.parquet"]
        out[f"{v}: cage annotate --persons"] = [*cli, f"{tmp}/{v}-p.parquet", "--persons"]
    out["photo: cage annotate single_face.jpg"] = [
        py, "-m", "cage_cli", "annotate", str(PHOTO), "-o", f"{tmp}/photo.parquet",
        "--overwrite", "-q"]
    out["photo: python -c 'import torch'"] = [py, "-c", "import torch"]
    return out


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out[name] = {"error": rs[-1].get("error")}
            continue
        out[name] = {k: statistics.median(r[k] for r in ok) for k in ("wall_s", "cpu_s")}
        out[name]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
        out[name]["rounds"] = len(ok)
    return out


def targets(s: dict[str, dict], videos: list[str]) -> list[dict]:
    rows = []

    def ratio(a: str, b: str, key: str) -> float | None:
        if "error" in s.get(a, {"error": 1}) or "error" in s.get(b, {"error": 1}):
            return None
        return s[a][key] / s[b][key]

    goals = {"interview": (5.0, 4.5), "short_clip": (3.0, None)}
    for v in videos:
        plain, with_p = goals.get(v, (None, None))
        for case, goal in ((f"{v}: cage annotate", plain),
                           (f"{v}: cage annotate --persons", with_p)):
            x_wall = ratio(f"{v}: naive loop", case, "wall_s")
            x_cpu = ratio(f"{v}: naive loop", case, "cpu_s")
            rows.append({"target": f"{case} >= {goal}x naive" if goal else f"{case} vs naive",
                         "x_wall": x_wall, "x_cpu": x_cpu,
                         "met": None if goal is None or x_wall is None else x_wall >= goal})
        p_wall = ratio(f"{v}: cage annotate --persons", f"{v}: cage annotate", "wall_s")
        p_cpu = ratio(f"{v}: cage annotate --persons", f"{v}: cage annotate", "cpu_s")
        rows.append({"target": f"{v}: --persons cost <= 1.25x without", "x_wall": p_wall,
                     "x_cpu": p_cpu, "met": None if p_wall is None else p_wall <= 1.25})
        if v == "interview" and "error" not in s.get(f"{v}: cage annotate --persons",
                                                     {"error": 1}):
            rss = s[f"{v}: cage annotate --persons"]["peak_rss_mib"]
            rows.append({"target": "interview --persons peak RSS <= 1536 MiB",
                         "value": rss, "met": rss <= 1536})
    photo, torch_ = "photo: cage annotate single_face.jpg", "photo: python -c 'import torch'"
    if "error" not in s.get(photo, {"error": 1}) and "error" not in s.get(torch_, {"error": 1}):
        extra = s[photo]["wall_s"] - s[torch_]["wall_s"]
        rows.append({"target": "one photo <= import torch + 0.5 s (wall)", "value": extra,
                     "met": extra <= 0.5})
    return rows


def fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))


def render(s: dict[str, dict], t: list[dict], meta: dict) -> str:
    lines = [f"Rounds: {meta['rounds']}; load average before/after each round: "
             f"{meta['load']}", "",
             "| case | wall s (median) | CPU s (median) | peak RSS MiB |", "|---|---|---|---|"]
    for name, r in s.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | |")
        else:
            lines.append(f"| {name} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | "
                         f"{r['peak_rss_mib']:.0f} |")
    lines += ["", "| target | x (wall) | x (CPU) | value | met |", "|---|---|---|---|---|"]
    for r in t:
        lines.append(f"| {r['target']} | {fmt(r.get('x_wall'))} | {fmt(r.get('x_cpu'))} | "
                     f"{fmt(r.get('value'))} | {fmt(r['met'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--videos", default="short_clip,interview")
    p.add_argument("--skip", default="", help="comma-separated words: cases naming one are "
                   "left out (e.g. naive)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    a = p.parse_args()
    videos = [v for v in a.videos.split(",") if v]
    runs: dict[str, list[dict]] = {}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        skip = [w for w in a.skip.split(",") if w]
        all_cases = {k: v for k, v in cases(videos, tmp).items()
                     if not any(w in k for w in skip)}
        names = list(all_cases)
        for k in range(a.rounds):
            before = _load()
            order = names[k % len(names):] + names[:k % len(names)]
            for name in order:
                r = run(all_cases[name], tmp)
                runs.setdefault(name, []).append(r)
                print(f"round {k + 1} {name}: {fmt(r['wall_s'])} s wall, {fmt(r['cpu_s'])} s CPU"
                      + (f" ({r['error']})" if "error" in r else ""), flush=True)
            load.append([before[0], _load()[0]])
    s = summarize({name: runs[name] for name in names})
    t = targets(s, videos)
    meta = {"rounds": a.rounds, "load": load, "python": sys.executable,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    text = render(s, t, meta)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "cases": s, "targets": t, "runs": runs}, indent=1))
    a.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
