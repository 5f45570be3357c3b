"""Photos of any size: peak RSS and wall time of `cage annotate` per photo size, and the
recall that chooses the detection floor for big photos (docs/performance.md).

    python benchmarks/big_photos.py sizes    # one photo per size, 3 to 200 MP, whole process
    python benchmarks/big_photos.py recall   # a tiled group photo, faces 40-150 px
    python benchmarks/big_photos.py recall4k # the same floors on 4K video frames
    python benchmarks/big_photos.py video 1 4  # interview.mp4 1x and 4x: peak RSS, speed

``sizes`` upscales a shared portrait to each size (JPEG, written to a temporary folder) and
runs ``python -m cage_cli annotate`` on it alone, one process per photo, reading the child's
peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``) and wall time; the memory rule is
1.0 GB + 12 bytes per pixel. ``recall`` pastes faces from the shared photos, 40-150 px, on a
48 MP canvas, and reports per detection floor the share of them found and the detection
time. ``video`` runs `cage annotate` on interview.mp4 (1080p, 105 frames) and on it looped
(e.g. 4x), in child processes, with the defaults and with --detect-every 1, interleaved.
Each prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
RESULTS = ROOT / "benchmarks" / "results"
PORTRAIT = MEDIA / "portrait_paul_rudd.jpg"
#: (label, width, height): 4:3 sizes from a small photo to a 200 MP phone sensor
SIZES = [("3 MP", 2000, 1500), ("13 MP", 4160, 3120), ("25 MP", 5800, 4350),
         ("51 MP", 8256, 6192), ("115 MP", 12400, 9300), ("200 MP", 16320, 12240)]


def rule_bytes(pixels: int) -> float:
    """The memory rule of issue 20: 1.0 GB + 12 bytes per pixel."""
    return 1e9 + 12 * pixels


def make_photo(path: Path, width: int, height: int, source: Path = PORTRAIT) -> None:
    """``source`` resized to width x height (the face scales with it), as a JPEG."""
    with Image.open(source) as im:
        im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(
            path, quality=90)


def annotate_once(photo: Path, out: Path, *args: str) -> dict:
    """Run `cage annotate` on one photo in a child process: wall time, the child's peak
    RSS (this process must have run no other child before), faces found, exit code."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cage_cli", "annotate", str(photo), "-o",
                           str(out), "--overwrite", "-q", *args],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    faces = None
    if proc.returncode == 0:
        import pyarrow.parquet as pq

        faces = pq.read_table(out).num_rows
    return {"wall_s": round(wall, 2), "peak_rss": rss, "faces": faces, "exit": proc.returncode,
            "stderr": proc.stderr.strip()[-300:]}


def one_size(label: str, width: int, height: int) -> dict:
    """Make the photo and measure one run (called in a fresh process, see ``sizes``)."""
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / f"photo_{width}x{height}.jpg"
        make_photo(photo, width, height)
        r = annotate_once(photo, Path(tmp) / "out.parquet")
    pixels = width * height
    return {"photo": label, "width": width, "height": height, "pixels": pixels,
            "rule_bytes": rule_bytes(pixels), **r}


def sizes(labels: list[str]) -> list[dict]:
    """Each size measured in its own helper process, so each getrusage sees one child."""
    rows = []
    for label, width, height in SIZES:
        if labels and label.replace(" ", "") not in labels:
            continue
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
                f"from benchmarks.big_photos import one_size; "
                f"print(json.dumps(one_size({label!r}, {width}, {height})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {row['photo']} | {row['width']}x{row['height']} | "
              f"{row['peak_rss'] / 2**30:.2f} GiB ({row['peak_rss'] / 1e9:.2f} GB) | "
              f"{row['rule_bytes'] / 1e9:.2f} GB | {row['wall_s']:.1f} s | {row['faces']} |",
              flush=True)
    return rows


def group_photo(width: int = 8000, height: int = 6000, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Faces of the shared photos pasted on a grey canvas, 40-150 px (their MTCNN box's
    shorter side), in a grid: the canvas and the pasted boxes (x1, y1, x2, y2)."""
    from cage_cli.annotation.detection.detect import DetectOptions, Detector
    from cage_cli.annotation.io.decode import load_image

    detector = Detector(DetectOptions(max_side=None))
    sources = []
    for path in sorted(MEDIA.glob("*.jpg")):
        image = load_image(str(path))
        for box in detector.detect([image])[0].boxes:
            if min(box[2] - box[0], box[3] - box[1]) >= 60:
                sources.append((image, box))
    rng = np.random.default_rng(seed)
    canvas = np.full((height, width, 3), 128, np.uint8)
    boxes, cell = [], 500
    for k, (y, x) in enumerate((y, x) for y in range(0, height - cell + 1, cell)
                               for x in range(0, width - cell + 1, cell)):
        image, box = sources[k % len(sources)]
        side = float(rng.uniform(40, 150))  # the face box's shorter side, pasted
        bw, bh = box[2] - box[0], box[3] - box[1]
        f = side / min(bw, bh)
        # Cut the face with its surroundings (2x the box), scale it, paste it in the cell.
        cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(bw, bh)
        region = [int(cx - half), int(cy - half), int(cx + half), int(cy + half)]
        piece = Image.fromarray(image).crop(region)
        size = min(cell, max(1, round(piece.width * f)))
        piece = np.asarray(piece.resize((size, size), Image.Resampling.BILINEAR))
        ox, oy = x + (cell - size) // 2, y + (cell - size) // 2
        canvas[oy : oy + size, ox : ox + size] = piece
        boxes.append([ox + (box[0] - region[0]) * f, oy + (box[1] - region[1]) * f,
                      ox + (box[2] - region[0]) * f, oy + (box[3] - region[1]) * f])
    return canvas, np.array(boxes, np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box in a (N, 4) with each in b (M, 4): (N, M)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def recall(floors: list[float]) -> list[dict]:
    """Share of the pasted faces found (IoU >= 0.5), per detection floor: the size in px of
    a 40 px face where MTCNN looks (DetectOptions.floor_px_photo)."""
    from cage_cli.annotation.detection.detect import DetectOptions, Detector

    canvas, truth = group_photo()
    sides = np.minimum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1])
    rows = []
    for floor in floors:
        detector = Detector(DetectOptions(floor_px_photo=floor))
        start = time.perf_counter()
        faces = detector.detect([canvas], is_image=True)[0]
        took = time.perf_counter() - start
        hit = (_iou(truth, faces.boxes).max(axis=1) >= 0.5) if len(faces) else \
            np.zeros(len(truth), bool)
        row = {"floor_px": floor,
               "scale": detector.scale(canvas.shape[1], canvas.shape[0], is_image=True),
               "faces": len(truth), "recall": round(float(hit.mean()), 3),
               "recall_40_60": round(float(hit[sides < 60].mean()), 3),
               "recall_60_150": round(float(hit[sides >= 60].mean()), 3),
               "detected": len(faces), "seconds": round(took, 2)}
        rows.append(row)
        print(f"| {floor:g} px | {row['scale']:.3f} | {row['recall']:.3f} | "
              f"{row['recall_40_60']:.3f} | {row['recall_60_150']:.3f} | {row['detected']} | "
              f"{took:.1f} s |", flush=True)
    return rows


#: `video` cases: cage's defaults, and every frame detected in full (before tracks)
VIDEO_CASES = {"default": [], "detect-every 1": ["--detect-every", "1"]}


def video_run(case: str, video: str) -> dict:
    """One `cage annotate VIDEO -o x.parquet` (VIDEO_CASES[case] added) in this process:
    run it in a fresh one."""
    from cage_cli.annotation.io.read import read_annotations
    from cage_cli.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            app(["annotate", video, "-o", f"{tmp}/out.parquet", "-q", *VIDEO_CASES[case]])
        except SystemExit as e:
            assert not e.code, e.code
        wall = time.perf_counter() - start
        rows = read_annotations(f"{tmp}/out.parquet").num_rows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": case, "video": Path(video).name, "rows": rows,
            "wall_s": round(wall, 2), "peak_rss": rss, "load": round(os.getloadavg()[0], 1)}


def video(loops: tuple[int, ...] = (1,), repeats: int = 2) -> list[dict]:
    """interview.mp4 (1080p, 105 frames) and the same looped ``loops`` times (packets
    copied), each VIDEO_CASES case, interleaved, each in a fresh process; whole process
    (imports and model loading included). Looped videos run in the first round only."""
    from benchmarks.gpu_check import loop_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = {1: str(MEDIA / "interview.mp4")}
        for k in loops:
            if k > 1:
                videos[k] = f"{tmp}/interview_x{k}.mp4"
                loop_video(MEDIA / "interview.mp4", Path(videos[k]), k)
        plan = [(k, v) for r in range(repeats) for k in loops if k == 1 or r == 0
                for v in VIDEO_CASES]
        for k, case in plan:
            code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from benchmarks.big_photos import video_run; "
                    f"print(json.dumps(video_run({case!r}, {videos[k]!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                 text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(loops=k, frames=105 * k, frames_per_s=round(105 * k / row["wall_s"], 2))
            rows.append(row)
            print(f"| {case} | {k}x ({105 * k} frames) | {row['frames_per_s']:.2f} | "
                  f"{row['peak_rss'] / 2**20:.0f} MiB | {row['load']} |", flush=True)
    return rows


def recall_4k(floors: list[float]) -> list[dict]:
    """The floor on 4K video (DetectOptions.floor_px_video): recall of faces >= 40 px tall
    against full-resolution detection, on 3840x2160 frames of 2x2 interview frames (every
    3rd, then every 2nd: the 4 frames of docs/performance.md's max-side table)."""
    from cage_cli.annotation.detection.detect import DetectOptions, Detector
    from cage_cli.annotation.io.decode import Sampling, frames
    from cage_cli.annotation.io.inputs import MediaFile

    hd = [f.image for f in frames(MediaFile(str(MEDIA / "interview.mp4"), "video"),
                                  Sampling(every=3))][::2]
    frames_4k = [np.concatenate([np.concatenate(hd[k : k + 2], 1),
                                 np.concatenate(hd[k + 2 : k + 4], 1)], 0)
                 for k in range(0, len(hd) - 3, 4)]
    full = Detector(DetectOptions(max_side=None))
    refs = [full.detect([im])[0].boxes for im in frames_4k]
    rows = []
    for floor in floors:
        detector = Detector(DetectOptions(floor_px_video=floor))
        found = total = 0
        start = time.perf_counter()
        for im, ref in zip(frames_4k, refs, strict=True):
            boxes = detector.detect([im])[0].boxes
            tall = (ref[:, 3] - ref[:, 1]) >= 40
            hit = (_iou(ref, boxes).max(axis=1) >= 0.5) if len(boxes) else np.zeros(len(ref),
                                                                                     bool)
            found, total = found + int((hit & tall).sum()), total + int(tall.sum())
        took = (time.perf_counter() - start) / len(frames_4k)
        row = {"floor_px": floor, "scale": detector.scale(3840, 2160), "faces_40px": total,
               "recall_40px": round(found / total, 3), "s_per_frame": round(took, 2)}
        rows.append(row)
        print(f"| {floor:g} px | {row['scale']:.3f} | {total} | {row['recall_40px']:.3f} | "
              f"{took:.1f} s |", flush=True)
    return rows


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "sizes"
    load = os.getloadavg()
    print(f"load average {load[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    if what == "recall4k":
        print("| 40 px face at | scale | faces >= 40 px | recall | s/frame |")
        print("|---|---|---|---|---|")
        rows = recall_4k([float(a) for a in argv[1:]] or [16.0, 12.0])
    elif what == "video":
        print("| case | video | frames/s | peak RSS | load |")
        print("|---|---|---|---|---|")
        rows = video(tuple(int(a) for a in argv[1:]) or (1,))
    elif what == "recall":
        print("| 40 px face at | scale | recall | 40-60 px | 60-150 px | detections | time |")
        print("|---|---|---|---|---|---|---|")
        rows = recall([float(a) for a in argv[1:]] or [16.0, 12.0, 10.0, 8.0])
    else:
        print("| photo | size | peak RSS | rule | wall time | faces |")
        print("|---|---|---|---|---|---|")
        rows = sizes(argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "_".join(["big_photos", what, *argv[1:]]).replace(".", "_")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"load_average": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
