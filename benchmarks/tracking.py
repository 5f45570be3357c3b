"""Fidelity and cost of keyframe detection (--detect-every K) against full detection (K=1).

    python benchmarks/tracking.py                  # both shared videos, K = 1 2 3 5 8 10
    python benchmarks/tracking.py --ks 1,5 --videos short_clip.mp4

For each video and K, ``Pipeline.run`` (what ``cage annotate`` runs, default options but
``detect_every``) annotates every frame in this process; the rows of K=1 are the reference.
Per K: recall of the reference faces at least 40 px tall and of smaller ones (matched in the
same frame by box IoU > 0.5, greedily, best IoU first), faces that K=1 does not have
("extra"), the mean IoU of the matched boxes, label agreement of the matched faces, the
number of tracks, and wall and CPU seconds of the run (models loaded before timing). Prints
a markdown table and writes benchmarks/results/tracking.json and tracking.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cage_cli.annotation.detection.track import box_iou as iou
from cage_cli.annotation.io.inputs import discover
from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions

HERE = Path(__file__).resolve().parent
MEDIA = HERE.parents[1] / "shared" / "media"
RESULTS = HERE / "results"
MIN_HEIGHT = 40  # faces that must be kept (px, box height at full resolution)
MIN_IOU = 0.5


def run(video: Path, k: int, model=None) -> tuple[dict, float, float, object]:
    """Rows (column -> numpy array) of one video at --detect-every k, wall and CPU seconds."""
    pipeline = Pipeline(AnnotateOptions(detect_every=k), RunOptions(), model=model)
    files = discover([str(video)]).files
    wall, cpu = time.perf_counter(), time.process_time()
    batches = [r.rows for r in pipeline.run(files) if r.rows is not None and r.rows.num_rows]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    table = pa.Table.from_batches(batches)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in
            ("frame_index", "track_id", "x1", "y1", "x2", "y2", "label")}, wall, cpu, \
        pipeline.model


def compare(ref: dict, got: dict) -> dict:
    """Recall (large and small faces), extra faces, mean IoU and label agreement."""
    boxes = lambda r, m: np.stack([r[c][m] for c in ("x1", "y1", "x2", "y2")], 1)  # noqa: E731
    large = small = large_hit = small_hit = extra = 0
    ious, agree = [], []
    for f in np.union1d(ref["frame_index"], got["frame_index"]):
        rm, gm = ref["frame_index"] == f, got["frame_index"] == f
        rb, gb = boxes(ref, rm), boxes(got, gm)
        rl, gl = ref["label"][rm], got["label"][gm]
        matched = np.full(len(rb), -1)
        if len(rb) and len(gb):
            m = iou(rb, gb)
            for flat in np.argsort(-m, axis=None):
                i, j = divmod(int(flat), m.shape[1])
                if m[i, j] <= MIN_IOU:
                    break
                if matched[i] < 0 and j not in matched:
                    matched[i] = j
        big = (rb[:, 3] - rb[:, 1]) >= MIN_HEIGHT
        large += int(big.sum())
        small += int((~big).sum())
        large_hit += int((big & (matched >= 0)).sum())
        small_hit += int((~big & (matched >= 0)).sum())
        extra += len(gb) - int((matched >= 0).sum())
        for i, j in enumerate(matched):
            if j >= 0:
                ious.append(iou(rb[i : i + 1], gb[j : j + 1])[0, 0])
                agree.append(rl[i] == gl[j])
    return {
        "recall_40px": large_hit / large if large else None,
        "faces_40px": large,
        "recall_small": small_hit / small if small else None,
        "faces_small": small,
        "extra": extra,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "label_agreement": float(np.mean(agree)) if agree else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="1,2,3,5,8,10")
    ap.add_argument("--videos", default="short_clip.mp4,interview.mp4")
    args = ap.parse_args()
    ks = sorted({1, *map(int, args.ks.split(","))})
    results: dict = {"load": os.getloadavg(), "cpus": os.cpu_count(), "videos": {}}
    model = None
    lines = ["| video | K | rows | tracks | recall >= 40 px | recall < 40 px | extra | mean IoU "
             "| label agreement | wall s | CPU s |", "|" + " --- |" * 11]
    for name in args.videos.split(","):
        rows = {}
        for k in ks:
            got, wall, cpu, model = run(MEDIA / name, k, model)
            rows[k] = {"rows": len(got["label"]), "tracks": len(np.unique(got["track_id"])),
                       "wall_s": wall, "cpu_s": cpu, **compare(rows.get(1, {}).get("_rows", got),
                                                             got), "_rows": got}
        results["videos"][name] = {}
        for k, r in rows.items():
            r.pop("_rows")
            results["videos"][name][k] = r
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name} | {k} | {r['rows']} | {r['tracks']} | {fmt(r['recall_40px'])} "
                         f"({r['faces_40px']}) | {fmt(r['recall_small'])} ({r['faces_small']}) | "
                         f"{r['extra']} | {fmt(r['mean_iou'])} | {fmt(r['label_agreement'])} | "
                         f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    results["load_after"] = os.getloadavg()
    table = "\n".join(lines)
    print(table)
    print(f"load average before/after: {results['load']} / {results['load_after']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracking.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "tracking.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
