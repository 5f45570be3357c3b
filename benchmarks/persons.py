"""Person linking on photos of known people: verification and clustering, box vs aligned crops.

    python benchmarks/persons.py [--identity ../shared/identity] [--out FILE]

For every photo in identity/identities.csv (london/: 100 studio portraits of 50 people; wild/:
61 photos of 13 public figures taken over years), cage's own MTCNN (Detector, default options,
as for photos) finds the faces; the person is the largest face (img31, img40 and img54 of wild/
show others too). Each face is embedded by ``faceapi-recognition`` twice: from face-api's own
box crop (box padded to a square, resized to 150) and from the crop aligned on its five
landmarks (cage_cli.annotation.identity.embed).

Measures:

* verification on wild/pairs.csv (deepface's 528 pairs): accuracy at face-api's threshold 0.6,
  at the chosen default, and at the best threshold for these pairs (an optimistic number);
* clustering (cage_cli.annotation.identity.linkage.link_persons, average and complete linkage) of
  each set on its own, aligned crops: pairwise precision and recall at thresholds 0.30 .. 0.60;
* one person within one video (short_clip.mp4, every 5th frame): how far apart the descriptors
  of one person's faces are, one by one and as a mean of the 3 best faces of each half;
* cost per face on this CPU: alignment, and embedding at batch 1 and 16 (median and fastest
  wall time, process CPU time); ``--cost-only`` re-times just that (``--threads N``).

Prints tables and writes JSON to benchmarks/results/persons.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cage_cli.annotation.detection.detect import DetectOptions, Detector
from cage_cli.annotation.identity.embed import (
    align_face,
    box_crops,
    distances,
    embed_crops,
    face_crops,
    face_quality,
    load_embedding_model,
)
from cage_cli.annotation.identity.linkage import (
    DEFAULT_THRESHOLD,
    LINKAGES,
    link_persons,
    pair_scores,
)

IDENTITY = Path(__file__).resolve().parents[2] / "shared" / "identity"
VIDEO = IDENTITY.parent / "media" / "short_clip.mp4"
OUT = Path(__file__).parent / "results" / "persons.json"
THRESHOLDS = np.round(np.arange(0.30, 0.60001, 0.025), 3)


def faces(root: Path) -> dict:
    """Per photo: person, set, the largest face's aligned and box crop; faces found."""
    rows = list(csv.DictReader(open(root / "identities.csv")))
    detector = Detector(DetectOptions(), "cpu")
    out = {"file": [], "person": [], "set": [], "aligned": [], "box": [], "n_faces": []}
    for row in rows:
        image = np.asarray(Image.open(root / row["file"]).convert("RGB"))
        (found,) = detector([image], [True])
        out["n_faces"].append(len(found))
        if not len(found):
            print(f"  no face in {row['file']}")
            continue
        area = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
        k = int(np.argmax(area))
        out["file"].append(row["file"])
        out["person"].append(row["person"])
        out["set"].append(row["file"].split("/")[0])
        out["aligned"].append(face_crops(image, found.landmarks[k:k + 1])[0])
        out["box"].append(box_crops(image, found.boxes[k:k + 1])[0])
    return out


def verification(root: Path, files: list[str], emb: np.ndarray) -> dict:
    index = {f: i for i, f in enumerate(files)}
    pairs = list(csv.DictReader(open(root / "wild" / "pairs.csv")))
    usable = [p for p in pairs if p["file_x"] in index and p["file_y"] in index]
    a = np.array([index[p["file_x"]] for p in usable])
    b = np.array([index[p["file_y"]] for p in usable])
    same = np.array([p["same_person"] == "1" for p in usable])
    d = np.linalg.norm(emb[a] - emb[b], axis=1)
    cands = np.unique(np.concatenate([d, [0.6, DEFAULT_THRESHOLD]]))
    accs = np.array([((d <= t) == same).mean() for t in cands])
    best = int(np.argmax(accs))
    return {
        "pairs": len(usable), "pairs_listed": len(pairs), "same": int(same.sum()),
        "accuracy_at_0.6": float(((d <= 0.6) == same).mean()),
        f"accuracy_at_{DEFAULT_THRESHOLD}": float(((d <= DEFAULT_THRESHOLD) == same).mean()),
        "best_accuracy": float(accs[best]), "best_threshold": float(cands[best]),
        "same_distance_mean": float(d[same].mean()), "same_distance_max": float(d[same].max()),
        "different_distance_mean": float(d[~same].mean()),
        "different_distance_min": float(d[~same].min()),
    }


def clustering(emb: np.ndarray, person: np.ndarray) -> dict:
    out = {}
    for linkage in LINKAGES:
        out[linkage] = [{"threshold": float(t), **pair_scores(person, link_persons(
            emb, float(t), linkage=linkage))} for t in THRESHOLDS]
    d = distances(emb)
    same = person[:, None] == person[None, :]
    upper = np.triu(np.ones_like(same), 1)
    out["closest_different_pair"] = float(d[~same & upper].min())
    out["farthest_same_pair"] = float(d[same & upper].max())
    return out


def timing(model, crop: np.ndarray, image: np.ndarray, marks: np.ndarray) -> dict:
    """ms per face: median and fastest wall time of repeated calls (the fastest is the least
    disturbed by other processes on a shared machine), and the process CPU time (all threads),
    which other processes barely change."""
    def ms(fn, n: int, repeats: int) -> dict[str, float]:
        fn()
        times = []
        cpu0 = time.process_time()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        return {"median": 1000 * float(np.median(times)) / n, "min": 1000 * min(times) / n,
                "cpu": 1000 * cpu / (n * repeats)}

    crops16 = np.repeat(crop[None], 16, axis=0)
    return {
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "align_ms_per_face": ms(lambda: align_face(image, marks), 1, 20),
        "embed_ms_per_face_batch1": ms(lambda: embed_crops(crop[None], model), 1, 30),
        "embed_ms_per_face_batch16": ms(lambda: embed_crops(crops16, model), 16, 10),
    }


def print_cost(c: dict) -> None:
    print(f"\ncost per face, ms (CPU, {c['torch_threads']} torch threads, load average "
          f"{c['load_average_1min']:.1f}): median / fastest call / process CPU time")
    for key in ("align_ms_per_face", "embed_ms_per_face_batch1", "embed_ms_per_face_batch16"):
        print(f"  {key:28} {c[key]['median']:7.1f} / {c[key]['min']:7.1f} / {c[key]['cpu']:7.1f}")


def cost_only(root: Path, out: Path) -> None:
    """--cost-only: re-time one london/ face and update the "cost" entry of ``out``."""
    image = np.asarray(Image.open(root / "london/019_neutral.jpg").convert("RGB"))
    (found,) = Detector(DetectOptions(), "cpu")([image], [True])
    crop = face_crops(image, found.landmarks[:1])[0]
    model = load_embedding_model(device="cpu")
    result = json.loads(out.read_text()) if out.exists() else {}
    result["cost"] = timing(model, crop, image, found.landmarks[0])
    print_cost(result["cost"])
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


def one_person_video(path: Path, step: int = 5, k: int = 3) -> dict:
    """The one face of every ``step``-th frame of a one-person video: how far apart one person's
    descriptors are within a video, face by face and as a mean of the ``k`` best faces
    (face_quality) of each half of the video (two tracks of one person)."""
    import av

    detector = Detector(DetectOptions(), "cpu")
    crops, quality = [], []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step:
                continue
            image = frame.to_ndarray(format="rgb24")
            (found,) = detector([image], [False])
            if len(found) == 1:
                crops.append(face_crops(image, found.landmarks)[0])
                quality.append(float(face_quality(found.landmarks)[0]))
    emb = embed_crops(np.stack(crops), load_embedding_model(device="cpu"))
    d = distances(emb)[np.triu_indices(len(emb), 1)]
    half = len(emb) // 2
    q = np.array(quality)

    def best(idx: np.ndarray) -> np.ndarray:
        return emb[idx[np.argsort(-q[idx], kind="stable")[:k]]].mean(0)

    a, b = best(np.arange(half)), best(np.arange(half, len(emb)))
    return {
        "video": path.name, "frame_step": step, "faces": len(emb),
        "pairwise_max": float(d.max()), "pairwise_mean": float(d.mean()),
        "to_mean_max": float(np.linalg.norm(emb - emb.mean(0), axis=1).max()),
        f"halves_mean_of_{k}_best": float(np.linalg.norm(a - b)),
    }


def print_video(v: dict) -> None:
    k = next(key for key in v if key.startswith("halves"))
    print(f"\none person in {v['video']} ({v['faces']} faces, every {v['frame_step']}th frame): "
          f"pairwise distance max {v['pairwise_max']:.3f}, mean {v['pairwise_mean']:.3f}; "
          f"to the mean max {v['to_mean_max']:.3f}; {k.replace('_', ' ')} {v[k]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identity", type=Path, default=IDENTITY)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cost-only", action="store_true",
                    help="only re-time the cost per face (updates its entry in --out)")
    ap.add_argument("--video-only", action="store_true",
                    help="only the one-person video (updates its entry in --out)")
    ap.add_argument("--video", type=Path, default=VIDEO)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cost_only:
        cost_only(args.identity, args.out)
        return
    if args.video_only:
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        result["one_person_video"] = one_person_video(args.video)
        print_video(result["one_person_video"])
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return

    t0 = time.perf_counter()
    data = faces(args.identity)
    print(f"{len(data['file'])} faces in {time.perf_counter() - t0:.0f} s "
          f"({sum(n > 1 for n in data['n_faces'])} photos with more than one face)")
    model = load_embedding_model(device="cpu")
    emb = {kind: embed_crops(np.stack(data[kind]), model) for kind in ("aligned", "box")}
    files, person, sets = data["file"], np.array(data["person"]), np.array(data["set"])
    result: dict = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "faces": {s: int((sets == s).sum()) for s in ("london", "wild")},
        "descriptor_norm": {"mean": float(np.linalg.norm(emb["aligned"], axis=1).mean()),
                            "min": float(np.linalg.norm(emb["aligned"], axis=1).min()),
                            "max": float(np.linalg.norm(emb["aligned"], axis=1).max())},
        "default_threshold": DEFAULT_THRESHOLD,
        "verification_wild": {k: verification(args.identity, files, e) for k, e in emb.items()},
        "clustering": {s: clustering(emb["aligned"][sets == s], person[sets == s])
                       for s in ("london", "wild")},
        "clustering_box_crop": {s: clustering(emb["box"][sets == s], person[sets == s])
                                for s in ("london", "wild")},
    }
    result["one_person_video"] = one_person_video(args.video)
    first = files.index(next(f for f in files if f.startswith("london/")))
    image = np.asarray(Image.open(args.identity / files[first]).convert("RGB"))
    (found,) = Detector(DetectOptions(), "cpu")([image], [True])
    result["cost"] = timing(model, data["aligned"][first], image, found.landmarks[0])

    print("\nverification, wild/pairs.csv (faceapi-recognition, Euclidean distance)")
    print(f"{'crop':8} {'pairs':>5} {'acc@0.6':>8} {'acc@' + str(DEFAULT_THRESHOLD):>9} "
          f"{'best acc':>8} {'at':>6}")
    for kind, v in result["verification_wild"].items():
        print(f"{kind:8} {v['pairs']:5d} {v['accuracy_at_0.6']:8.3f} "
              f"{v[f'accuracy_at_{DEFAULT_THRESHOLD}']:9.3f} {v['best_accuracy']:8.3f} "
              f"{v['best_threshold']:6.3f}")
    for label, table in (("aligned", result["clustering"]),
                         ("box crop", result["clustering_box_crop"])):
        print(f"\nclustering, {label}: pairwise precision / recall (persons found)")
        header = "threshold " + " ".join(f"{s + ' ' + lk:>22}" for s in ("london", "wild")
                                         for lk in LINKAGES)
        print(header)
        for i, t in enumerate(THRESHOLDS):
            cells = []
            for s in ("london", "wild"):
                for lk in LINKAGES:
                    r = table[s][lk][i]
                    cells.append(f"{r['precision']:.3f} / {r['recall']:.3f} ({r['persons']:3d})")
            print(f"{t:9.3f} " + " ".join(f"{c:>22}" for c in cells))
        for s in ("london", "wild"):
            print(f"{s}: closest different-person pair {table[s]['closest_different_pair']:.3f}, "
                  f"farthest same-person pair {table[s]['farthest_same_pair']:.3f}")
    print_video(result["one_person_video"])
    print_cost(result["cost"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
