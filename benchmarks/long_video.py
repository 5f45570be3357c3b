"""A long 1080p video (issue 31): frames/s and memory over its length, in one process.

    python benchmarks/long_video.py [--minutes 10] [--fps 2] [--persons]
                                    [--out benchmarks/results/long_video.json]

Builds the video from the shared interview.mp4 (1080p, 105 frames) looped by copying packets
(no re-encoding, ``gpu_check.loop_video``) to at least ``--minutes`` of video, then annotates
it with the library (``Pipeline.run``, cage's defaults plus ``--fps``; ``--fps 0``: every frame)
and records, after each piece of results, the frames done, the process's resident memory
(``/proc/self/statm``) and its CPU time. The run is cut into ten equal parts by frames: the
table gives each part's frames/s (wall and per CPU second) and the RSS at its end. Flat means
the last part's rate and RSS are within a few per cent of the second's (the first holds
start-up and warm-up). The loop joins show up as cuts (a jump back to the clip's start), so
tracks end there, as they would at an edit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**20


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=2.0, help="0: every frame")
    p.add_argument("--persons", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "long_video.json")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import av

    from benchmarks.gpu_check import loop_video
    from cage_cli.annotation.io.decode import Sampling
    from cage_cli.annotation.io.inputs import discover
    from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline

    clip = MEDIA / "interview.mp4"
    with av.open(str(clip)) as c:
        seconds = float(c.streams.video[0].frames / c.streams.video[0].average_rate)
    loops = int(-(-a.minutes * 60 // seconds))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        loop_video(clip, video, loops)
        opts = AnnotateOptions(sampling=Sampling(fps=a.fps or None), persons=a.persons)
        t0, c0 = time.perf_counter(), cpu_s()
        pipe = Pipeline(opts)
        trace = [(0.0, 0, rss_mib(), 0.0)]  # wall s, frames, RSS MiB, CPU s since start
        frames = rows = 0
        for r in pipe.run(discover([str(video)]).files):
            frames += r.frames
            rows += r.rows.num_rows if r.rows is not None else 0
            trace.append((time.perf_counter() - t0, frames, rss_mib(), cpu_s() - c0))
            if r.error:
                raise SystemExit(f"{video}: {r.error}")
    parts = []
    for k in range(1, 11):
        lo = next(t for t in trace if t[1] >= frames * (k - 1) / 10)
        hi = next(t for t in trace if t[1] >= frames * k / 10)
        n = hi[1] - lo[1]
        parts.append({"part": k, "frames": n, "frames_per_s": n / (hi[0] - lo[0]),
                      "frames_per_cpu_s": n / (hi[3] - lo[3]), "rss_mib_end": hi[2],
                      "rss_mib_max": max(t[2] for t in trace if lo[0] <= t[0] <= hi[0])})
    meta = {"video_s": loops * seconds, "loops": loops, "fps": a.fps, "persons": a.persons,
            "frames": frames, "rows": rows, "wall_s": trace[-1][0], "cpu_s": trace[-1][3],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_end": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    lines = [f"{meta['video_s'] / 60:.1f} min of 1080p video ({loops} loops of interview.mp4), "
             f"--fps {a.fps or 'all'}{' --persons' if a.persons else ''}: {frames} frames, "
             f"{rows} rows, {meta['wall_s']:.0f} s wall, {meta['cpu_s']:.0f} s CPU, peak RSS "
             f"{meta['peak_rss_mib']:.0f} MiB, load {meta['load_end']:.1f} at the end", "",
             "| part | frames | frames/s | frames / CPU s | RSS MiB at end | RSS MiB max |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {q['part']} | {q['frames']} | {q['frames_per_s']:.2f} | "
              f"{q['frames_per_cpu_s']:.2f} | {q['rss_mib_end']:.0f} | {q['rss_mib_max']:.0f} |"
              for q in parts]
    second, last = parts[1], parts[-1]
    meta["last_vs_second"] = {"frames_per_s": last["frames_per_s"] / second["frames_per_s"],
                              "rss": last["rss_mib_max"] / second["rss_mib_max"]}
    lines += ["", f"last part / second part: frames/s {meta['last_vs_second']['frames_per_s']:.3f},"
              f" RSS {meta['last_vs_second']['rss']:.3f}"]
    text = "\n".join(lines)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "parts": parts, "trace": trace}, indent=1))
    a.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
