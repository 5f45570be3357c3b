"""`cage annotate --persons` end to end (issue 25): what it costs, and how `cage persons` links.

1. Cost: whole-process wall time of `cage annotate` with and without `--persons` on
   interview.mp4 and short_clip.mp4, alternating in one run (rounds, median).
2. Linking: photos of one person (frames of short_clip.mp4, seconds apart, saved as photos)
   among photos of others (the shared portraits, multiface.jpg's six faces) and of the
   identity sets (../shared/identity: london/ 50 people x 2, wild/ 13 people), annotated with
   --persons once, then `cage persons` at thresholds 0.30 .. 0.60: pairwise precision and recall.

    python benchmarks/persons_run.py [--rounds 3] [--skip-cost]

Prints tables; writes benchmarks/results/persons_run.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
IDENTITY = ROOT.parent / "shared" / "identity"
CAGE = [sys.executable, "-m", "cage_cli"]


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(CAGE + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def cost(rounds: int, tmp: Path) -> list[dict]:
    rows = []
    for video in ("interview.mp4", "short_clip.mp4"):
        times: dict[str, list[float]] = {"default": [], "--persons": []}
        for r in range(rounds):
            for name in (("default", "--persons") if r % 2 == 0 else ("--persons", "default")):
                extra = ["--persons"] if name == "--persons" else []
                out = tmp / f"{video}.{r}.{name.strip('-')}.parquet"
                times[name].append(timed(["annotate", str(MEDIA / video), "-o", str(out),
                                          "-q", *extra]))
        base, with_p = statistics.median(times["default"]), statistics.median(times["--persons"])
        rows.append({"video": video, "default_s": base, "persons_s": with_p,
                     "ratio": with_p / base, "rounds": times})
    return rows


#: people who are in both the shared media and identity/wild (checked by eye): the Angelina
#: Jolie portrait is wild-01; multiface.jpg (the cast of Friends) shows Jennifer Aniston, wild-02,
#: as its face 3
SAME_AS = {"portrait_angelina_jolie": "wild-01", "multiface 3": "wild-02"}


def photo_set(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A folder of photos and the true person of each (file name -> person; multiface.jpg's
    faces are six people of their own, keyed by face index)."""
    d = tmp / "photos"
    d.mkdir()
    truth = {}
    with av.open(str(MEDIA / "short_clip.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 20 == 0:
                f.to_image().save(d / f"clip_{i:03d}.jpg", quality=92)
                truth[f"clip_{i:03d}.jpg"] = "clip person"
    for p in sorted(MEDIA.glob("portrait_*.jpg")) + [MEDIA / "multiface.jpg"]:
        (d / p.name).symlink_to(p)
        truth[p.name] = SAME_AS.get(p.stem, p.stem)
    with open(IDENTITY / "identities.csv") as f:
        for row in csv.DictReader(f):
            name = row["file"].replace("/", "_")
            (d / name).symlink_to(IDENTITY / row["file"])
            truth[name] = row["person"]
    return d, truth


def pair_scores(truth: list[str], predicted: list[int]) -> dict:
    t, p = np.asarray(truth), np.asarray(predicted)
    upper = np.triu(np.ones((len(t), len(t)), bool), 1)
    same_t, same_p = (t[:, None] == t[None]) & upper, (p[:, None] == p[None]) & upper
    tp = int((same_t & same_p).sum())
    return {"precision": tp / max(int(same_p.sum()), 1), "recall": tp / max(int(same_t.sum()), 1),
            "persons": int(len(set(predicted))), "true_persons": int(len(set(truth)))}


def linking(tmp: Path) -> list[dict]:
    from cage_cli.annotation.identity.persons import link_sources

    folder, truth = photo_set(tmp)
    out = tmp / "photos.parquet"
    subprocess.run(CAGE + ["annotate", str(folder), "--persons", "-o", str(out), "-q"],
                   check=True)
    rows = pq.read_table(out)
    names = [Path(s).name for s in rows.column("source").to_pylist()]
    faces = rows.column("face_index").to_pylist()
    # The person of each face: multiface's faces are six people; in the other photos the
    # person is the largest face (wild/'s img31, img40, img54 show others: left out).
    area = ((pa.compute.subtract(rows["x2"], rows["x1"]).to_numpy()) *
            (pa.compute.subtract(rows["y2"], rows["y1"]).to_numpy()))
    largest = {}
    for i, n in enumerate(names):
        if n not in largest or area[i] > area[largest[n]]:
            largest[n] = i
    keep = [i for i, n in enumerate(names)
            if n == "multiface.jpg" or largest[n] == i]
    who = [SAME_AS.get(f"multiface {faces[i]}", f"multiface {faces[i]}")
           if names[i] == "multiface.jpg" else truth[names[i]] for i in keep]
    sub = rows.take(pa.array(keep))
    out_rows = []
    for threshold in np.round(np.arange(0.30, 0.601, 0.025), 3):
        people = link_sources(sub, float(threshold)).column("person").to_pylist()
        s = pair_scores(who, people)
        mixed = {}
        for w, q in zip(who, people, strict=True):
            mixed.setdefault(q, set()).add(w)
        s["merged"] = sorted(sorted(v) for v in mixed.values() if len(v) > 1)
        out_rows.append({"threshold": float(threshold), **s, "faces": len(keep)})
    return out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-cost", action="store_true")
    a = ap.parse_args()
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "load_average": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not a.skip_cost:
            result["cost"] = cost(a.rounds, tmp)
            print("| video | cage annotate | --persons | ratio |\n| --- | --- | --- | --- |")
            for r in result["cost"]:
                print(f"| {r['video']} | {r['default_s']:.2f} s | {r['persons_s']:.2f} s | "
                      f"{r['ratio']:.2f}x |")
        result["linking"] = linking(tmp)
    print("\n| threshold | precision | recall | persons (true) |\n| --- | --- | --- | --- |")
    for r in result["linking"]:
        print(f"| {r['threshold']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['persons']} ({r['true_persons']}) | {r['merged']}")
    result["machine"]["load_average_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "persons_run.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
