"""Keyframes in video time and cuts (issue 33): faces found by the default against full detection
at each sampling rate, and the default's speed at full rate before and after.

    python benchmarks/keyframes.py                       # both parts
    python benchmarks/keyframes.py --part share          # or: --part speed
    python benchmarks/keyframes.py --part speed --before OLD_CAGE --repeats 5

``--before`` is the console script of the code to compare with (default: main's). The results
of 2026-12-04 used main at 584656b, the code before this change (main had merged it by then),
through a wrapper: ``PYTHONPATH=<git archive 584656b> /work/main/.venv/bin/python -m cage_cli``.

**share**: in this process (``Pipeline.run``, default options but ``detect_every`` and the
sampling), each video at every frame and at ``--fps 5``, ``2`` and ``1``, with the default
(``--detect-every 5``) and with ``--detect-every 1`` (the reference). A reference face is found
when the default has a face in the same frame with box IoU > 0.5 (greedy, best first). Videos:
a cut video built from the shared clips (tests/cut_video.py: 640x360, 13 shots of irregular
length, 12 hard cuts, none at a multiple of 5 frames), and interview.mp4. For the cut video
also: the cuts found (the ``shot`` column against the true cuts between sampled frames) and the
tracks that span a cut.

**cuts**: the two measures of the cut test (cage_cli/annotation/detection/shots.py) between
consecutive sampled frames of the three videos at every frame and ``--fps 10`` to ``1``: their
largest values within shots (continuous footage: false cuts above the thresholds) and smallest at
the cut video's cuts.

**speed**: whole processes, ``cage annotate VIDEO -o out.parquet --overwrite -q`` at full rate
on interview.mp4 and short_clip.mp4, with the ``--before`` console script (main's code) and the
``--after`` one (this checkout's), alternating, ``--repeats`` times each; wall seconds and CPU
seconds of the child (user + system).

Prints markdown tables and writes benchmarks/results/keyframes.json and keyframes.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import cut_video  # noqa: E402
from cut_video import found  # noqa: E402

from cage_cli.annotation.io.decode import Sampling  # noqa: E402
from cage_cli.annotation.io.inputs import MediaFile  # noqa: E402
from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions  # noqa: E402

MEDIA = HERE.parents[1] / "shared" / "media"
RESULTS = HERE / "results"
#: 13 shots, 12 cuts, 18.4 s at 25 fps
SHOTS = [31, 17, 44, 23, 52, 19, 38, 27, 61, 14, 47, 33, 53]
RATES = (None, 5.0, 2.0, 1.0)


def annotate(path: Path, k: int, fps: float | None, model,
             exe: str | None = None) -> tuple[pa.Table, object]:
    """Rows of one video (--keep-empty): in this process, or by the console script ``exe``."""
    if exe is not None:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([exe, "annotate", str(path), "-o", f"{tmp}/o.parquet", "-q",
                            "--keep-empty", "--detect-every", str(k),
                            *(["--fps", str(fps)] if fps else [])], check=True)
            return pq.read_table(f"{tmp}/o.parquet"), model
    pipeline = Pipeline(AnnotateOptions(detect_every=k, sampling=Sampling(fps=fps),
                                        keep_empty=True), RunOptions(), model=model)
    results = list(pipeline.run([MediaFile(str(path), "video")]))
    return pa.Table.from_batches([r.rows for r in results if r.rows is not None]), \
        pipeline.model


def cut_stats(t: pa.Table, starts: list[int]) -> dict:
    """Cuts between sampled frames (to the other clip) found, false cuts, tracks that span
    a true cut (ids seen in two shots)."""
    d = t.select(["frame_index", "track_id"]).to_pydict()
    shot = t["shot"].to_pylist() if "shot" in t.column_names else None  # schema v2: none
    frames = sorted(set(zip(d["frame_index"], shot or d["frame_index"], strict=True)))
    true = [bisect.bisect_right(starts, f) - 1 for f, _ in frames]
    real = found_cuts = false = 0
    for (_, s0), (_, s1), a, b in zip(frames, frames[1:], true, true[1:], strict=False):
        if a % 2 != b % 2:
            real += 1
            found_cuts += s1 != s0
        elif a == b:
            false += s1 != s0
    stats = {"cuts": real} if shot is None else {"cuts": real, "cuts_found": found_cuts,
                                                 "false_cuts": false}
    spans = {}
    for f, tid in zip(d["frame_index"], d["track_id"], strict=True):
        if tid is not None:
            spans.setdefault(tid, set()).add(bisect.bisect_right(starts, f) - 1)
    return stats | {"tracks": len(spans),
                    "tracks_spanning_a_cut": sum(len(s) > 1 for s in spans.values())}


def share_part(results: dict, before: str | None, videos: str) -> list[str]:
    lines = ["| video | sampling | code | faces (`--detect-every 1`) | found by the default "
             "| share | cuts found | false cuts | tracks spanning a cut | wall s (K=1 / "
             "default) |", "|" + " --- |" * 10]
    with tempfile.TemporaryDirectory() as tmp:
        cuts = Path(tmp) / "cuts.mp4"
        starts = cut_video.build(cuts, MEDIA, SHOTS, (640, 360)) if "cut" in videos else []
        results["cut_video"] = {"shots": SHOTS, "starts": starts, "size": [640, 360]}
        model = None
        for name, path, rates in (("cut video", cuts, RATES),
                                  ("interview.mp4", MEDIA / "interview.mp4", (None, 5.0))):
            if name.split()[0].split(".")[0] not in videos:
                continue
            for fps, code in ((f, c) for f in rates for c in ("before", "after")):
                if code == "before" and before is None:
                    continue
                exe = before if code == "before" else None
                t0 = time.perf_counter()
                ref, model = annotate(path, 1, fps, model, exe)
                t1 = time.perf_counter()
                got, model = annotate(path, 5, fps, model, exe)
                t2 = time.perf_counter()
                total, hits = found(ref, got)
                row = {"video": name, "fps": fps, "code": code, "faces_ref": total, "found": hits,
                       "share": hits / total, "wall_ref_s": t1 - t0, "wall_default_s": t2 - t1,
                       "sources": dict(zip(*np.unique(got["face_source"].drop_null(),
                                                      return_counts=True), strict=True))}
                row["sources"] = {k: int(v) for k, v in row["sources"].items()}
                if path == cuts:
                    row |= cut_stats(got, starts)
                results["share"].append(row)
                c = (f"{row.get('cuts_found', '-')} of {row['cuts']} | "
                     f"{row.get('false_cuts', '-')} | "
                     f"{row['tracks_spanning_a_cut']} of {row['tracks']}") if path == cuts \
                    else "- | - | -"
                lines.append(f"| {name} | {'every frame' if fps is None else f'--fps {fps:g}'} "
                             f"| {code} "
                             f"| {total} | {hits} | {hits / total:.3f} | {c} | "
                             f"{row['wall_ref_s']:.0f} / {row['wall_default_s']:.0f} |")
                print(lines[-1], flush=True)
    return lines


def cuts_part(results: dict) -> list[str]:
    """The cut tests' two measures between consecutive sampled frames (shots.py), within
    shots (continuous footage) and at cuts, per video and sampling rate."""
    from cage_cli.annotation.detection import shots
    from cage_cli.annotation.io.decode import frames

    lines = ["| video | sampling | pairs | within a shot: colour change max | grey change max "
             "(frames <= 0.1 s apart) | grey change max (further) | cuts | at cuts: colour "
             "change min | grey change min |", "|" + " --- |" * 9]
    with tempfile.TemporaryDirectory() as tmp:
        cuts = Path(tmp) / "cuts.mp4"
        starts = cut_video.build(cuts, MEDIA, SHOTS, (640, 360))
        videos = [("cut video", cuts), ("interview.mp4", MEDIA / "interview.mp4"),
                  ("short_clip.mp4", MEDIA / "short_clip.mp4")]
        for (name, path), fps in ((v, f) for v in videos for f in (None, 10.0, 5.0, 2.0, 1.0)):
            got = list(frames(MediaFile(str(path), "video"), Sampling(fps=fps), cuts=False))
            thumbs = [shots.thumbnail(f.image) for f in got]
            same, near, far, at = [], [], [], []
            for a, b, ta, tb in zip(got, got[1:], thumbs, thumbs[1:], strict=False):
                colour, grey = shots.colour_change(ta, tb), shots.picture_change(ta, tb)
                sa, sb = (bisect.bisect_right(starts, f.index) for f in (a, b))
                if path == cuts and sa % 2 != sb % 2:
                    at.append((colour, grey))
                elif path != cuts or sa == sb:
                    same.append(colour)
                    (near if b.timestamp - a.timestamp <= shots.PICTURE_GAP + 1e-6
                     else far).append(grey)
            m = lambda v: f"{max(v):.3g}" if v else "-"  # noqa: E731
            row = {"video": name, "fps": fps, "pairs": len(got) - 1, "colour_max": max(same),
                   "grey_near_max": max(near, default=None), "grey_far_max": max(far, default=None),
                   "cuts": len(at), "cut_colour_min": min((c for c, _ in at), default=None),
                   "cut_grey_min": min((g for _, g in at), default=None)}
            results["cut_tests"].append(row)
            lines.append(f"| {name} | {'every frame' if fps is None else f'--fps {fps:g}'} | "
                         f"{row['pairs']} | {max(same):.3f} | {m(near)} | {m(far)} | {len(at)} | "
                         + (f"{row['cut_colour_min']:.3f} | {row['cut_grey_min']:.1f} |" if at
                            else "- | - |"))
            print(lines[-1], flush=True)
    return lines


def speed_part(results: dict, before: str, after: str, repeats: int) -> list[str]:
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for video in ("interview.mp4", "short_clip.mp4"):
                for side, exe in (("before", before), ("after", after)):
                    cmd = [exe, "annotate", str(MEDIA / video), "-o", f"{tmp}/out.parquet",
                           "--overwrite", "-q"]
                    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True)
                    wall = time.perf_counter() - t0
                    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                    runs.setdefault((video, side), []).append((wall, cpu))
                    print(f"{video} {side}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    lines = ["| video | before: wall s (median; runs) | after | after / before, wall: median "
             "/ best | CPU s (median) before / after | after / before (CPU) |",
             "|" + " --- |" * 6]
    for video in ("interview.mp4", "short_clip.mp4"):
        b, a = np.array(runs[(video, "before")]), np.array(runs[(video, "after")])
        mb, ma = np.median(b, axis=0), np.median(a, axis=0)
        best = a[:, 0].min() / b[:, 0].min()
        results["speed"][video] = {"before": b.tolist(), "after": a.tolist(),
                                   "wall_ratio": ma[0] / mb[0], "best_wall_ratio": best,
                                   "cpu_ratio": ma[1] / mb[1]}
        lines.append(f"| {video} | {mb[0]:.1f} ({', '.join(f'{x:.1f}' for x in b[:, 0])}) | "
                     f"{ma[0]:.1f} ({', '.join(f'{x:.1f}' for x in a[:, 0])}) | "
                     f"{ma[0] / mb[0]:.3f} / {best:.3f} | {mb[1]:.1f} / {ma[1]:.1f} | "
                     f"{ma[1] / mb[1]:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("share", "cuts", "speed", "both"), default="both")
    ap.add_argument("--before", default="/work/main/.venv/bin/cage")
    ap.add_argument("--after", default=str(Path(sys.executable).parent / "cage"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", default="cut,interview", help="share: cut and/or interview")
    ap.add_argument("--share-before", action="store_true",
                    help="share: also the --before console script (by its CLI)")
    args = ap.parse_args()
    results: dict = {"load": os.getloadavg(), "cpus": os.cpu_count(), "share": [], "speed": {},
                     "cut_tests": [],
                     "before": args.before, "after": args.after,
                     "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = []
    if args.part in ("share", "both"):
        out += share_part(results, args.before if args.share_before else None,
                          args.videos) + [""]
    if args.part in ("cuts", "both"):
        out += cuts_part(results) + [""]
    if args.part in ("speed", "both"):
        out += speed_part(results, args.before, args.after, args.repeats)
    results["load_after"] = os.getloadavg()
    out.append(f"\nload average before/after: {results['load']} / {results['load_after']}, "
               f"{results['cpus']} CPUs, {results['started']}")
    text = "\n".join(out)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = "keyframes" if args.part == "both" else f"keyframes-{args.part}"
    if args.part == "share" and args.videos != "cut,interview":
        name += "-" + args.videos.replace(",", "-")
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    (RESULTS / f"{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
