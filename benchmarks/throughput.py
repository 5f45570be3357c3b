"""End-to-end throughput: frames/s, faces/s and peak memory of cage, a naive loop and fer.

    python benchmarks/throughput.py            # full run (about 25 minutes on 2 CPU cores)
    python benchmarks/throughput.py --quick    # smoke run: a few frames of each input
    python benchmarks/throughput.py --sections headline,recall --repeats 2

Every measured case runs in its own Python process, which reports frames, faces, wall and CPU
seconds and its peak resident memory (getrusage ru_maxrss) as one JSON line, so the memory is
per case. Imports and model loading are not timed; everything from the first frame read to the
last prediction is. Cases, on short_clip.mp4 (all frames), interview.mp4 (the first
``--interview-frames``) and the 7 shared photos:

- naive: per frame decord ``vr[i]`` (Pillow for photos), facenet-pytorch MTCNN on that one
  full-resolution frame (cage's threshold and minimum face, no downscaling), then each face
  cropped with cage_cli.preprocess.crop_faces and classified alone (batch size 1);
- fer: the fer package with ``FER(mtcnn=True)``, through its own ``Video.analyze`` (no display,
  no saved frames or video, no drawing) or ``detect_emotions(path)`` for photos; on short_clip
  also with its frames turned from BGR to RGB before MTCNN (fer passes OpenCV's BGR); run with
  ``$CAGE_FER_PYTHON`` (default /work/devvenv-tf/bin/python), skipped if that cannot import
  fer and facenet-pytorch;
- cage: ``Pipeline.run`` (what ``cage annotate`` runs) with its defaults (videos: full
  detection on every 5th frame, faces followed between), with ``--detect-every 1`` (every
  frame detected in full, as before tracks), with 1 thread, with another ``max_side`` (960,
  or 1280 where 960 is the default; interview and photos) or the
  fer-mini-xception model (short_clip);
- cage annotate: the command itself (``python -m cage_cli annotate INPUT -o out.parquet``), as
  a user runs it; its process time, start to exit, is the whole-process figure that issue 18's
  targets compare with the naive loop's and fer's processes;
- decode / detect / infer: each stage alone on the same input:
  cage_cli.annotation.io.decode.frames; cage's Detector with cage's CPU worker threads on
  pre-decoded frames (also on BGR frames, as fer feeds MTCNN); the model on pre-cut crops in
  batches of 64 (the ceiling of each stage).

Then: how the cost grows with resolution (interview.mp4 at 480p/720p/1080p), faces per frame
(single_face.jpg tiled 1x1/2x2/3x3 in equal frames) and video length (short_clip looped to
1x/4x/16x; peak RSS per length); and detection recall and time per frame against
full-resolution detection for several ``max_side`` values (faces at least 40 px tall at full
resolution, boxes matched by IoU >= 0.5).

``--inputs`` picks the headline inputs (default: both videos, whole, and the photos), and
``--cases`` the cases, by label (e.g. ``"naive,fer,cage default,cage detect-every 1"``).
Cases are interleaved round by round (``--repeats``); each figure is the median over rounds.
Before each case the script waits (up to ``--quiet-wait`` seconds in all) while other processes
use more than a quarter of the machine, and it reports the share they used during each case.
Prints markdown tables and writes benchmarks/results/throughput.json and throughput.md.
Derived inputs are written to a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEDIA = HERE.parents[1] / "shared" / "media"
RESULTS = HERE / "results"
FER_PYTHON = "/work/devvenv-tf/bin/python"
PHOTOS = ("multiface.jpg", "no_faces.jpg", "portrait_angelina_jolie.jpg",
          "portrait_kate_siegel.jpg", "portrait_paul_rudd.jpg", "portrait_shea_whigham.jpg",
          "single_face.jpg")
PORTRAITS = tuple(p for p in PHOTOS if p.startswith("portrait_"))

#: det max_side values for the recall sweep (None: full resolution).
MAX_SIDES = (640, 960, 1280, 1600, None)
MIN_HEIGHT = 40  # faces that must be kept: at least this tall at full resolution
NO_FLOOR = "960, no min_scale"  # recall: max_side 960 without the face_floor floor
LENGTHS = (1, 4, 16)  # short_clip looped this many times: 115 frames (69 MB of RGB) and up
DEFAULT = "default"  # marks an option left at cage's default


# ---------------------------------------------------------------------------------------------
# Child side: one measured case per process.


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict:
    return {"wall_s": time.perf_counter() - start[0], "cpu_s": time.process_time() - start[1]}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _is_video(path: str) -> bool:
    return Path(path).suffix.lower() in (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def _set_threads(case: dict) -> None:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])


def _media_files(case: dict) -> list:
    from cage_cli.annotation.io.inputs import MediaFile

    return [MediaFile(p, "video" if _is_video(p) else "image") for p in case["paths"]]


def _sampling(case: dict):
    from cage_cli.annotation.io.decode import Sampling

    return Sampling(max_frames=case.get("max_frames"))


def _decode_all(case: dict) -> list:
    from cage_cli.annotation.io.decode import frames

    return [f.image for file in _media_files(case) for f in frames(file, _sampling(case))]


def _detect_options(case: dict, **extra):
    from cage_cli.annotation.detection.detect import DetectOptions

    kw = dict(extra)
    if case.get("max_side", DEFAULT) != DEFAULT:
        kw["max_side"] = case["max_side"]
    return DetectOptions(**kw)


def child_decode(case: dict) -> dict:
    from cage_cli.annotation.io.decode import frames

    start, n = _clock(), 0
    for file in _media_files(case):
        for _ in frames(file, _sampling(case)):
            n += 1
    return {"frames": n, "faces": None, **_since(start)}


def child_detect(case: dict) -> dict:
    from cage_cli.annotation.detection.detect import Detector
    from cage_cli.annotation.running.pipeline import RunOptions
    from cage_cli.annotation.running.workers import cpu_workers

    _set_threads(case)
    images = _decode_all(case)
    if case.get("bgr"):  # as fer feeds MTCNN: OpenCV's BGR frames
        images = [im[:, :, ::-1].copy() for im in images]
    detector = Detector(_detect_options(case), "cpu", cpu_workers("cpu"))
    fpb = case.get("frames_per_batch") or RunOptions().frames_per_batch
    boxes = []
    start = _clock()
    waits = [detector.submit(images[i : i + fpb]) for i in range(0, len(images), fpb)]
    for wait in waits:
        boxes += [f.boxes.tolist() for f in wait.get()]
    result = {"frames": len(images), "faces": sum(len(b) for b in boxes), **_since(start)}
    if case.get("boxes_out"):
        Path(case["boxes_out"]).write_text(json.dumps(boxes))
    return result


def child_infer(case: dict) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from cage_cli.annotation.detection.detect import Detector
    from cage_cli.models import DEFAULT_MODEL, create_model
    from cage_cli.preprocess import crop_faces

    _set_threads(case)
    images = _decode_all(case)
    model = create_model(case.get("model", DEFAULT_MODEL), device="cpu")
    path = case.get("boxes_in")
    if path and Path(path).exists():
        saved = json.loads(Path(path).read_text())
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in saved]
    else:  # no detect case ran first: detect here, untimed
        detector = Detector(_detect_options(case), "cpu")
        boxes = [f.boxes for im in images for f in detector([im])]
    start = _clock()
    crops = [crop_faces(Image.fromarray(im), b, model.config)
             for im, b in zip(images, boxes, strict=True) if len(b)]
    crop = _since(start)
    x = torch.cat(crops) if crops else torch.zeros((0, 1, 1, 3), dtype=torch.uint8)
    batch = case.get("batch", 64)
    start = _clock()
    for i in range(0, len(x), batch):
        model.predict(x[i : i + batch])
    return {"frames": len(images), "faces": len(x), **_since(start),
            "crop_wall_s": crop["wall_s"], "crop_cpu_s": crop["cpu_s"]}


def child_naive(case: dict) -> dict:
    import decord
    import numpy as np
    from facenet_pytorch import MTCNN
    from PIL import Image

    from cage_cli.annotation.io.decode import load_image
    from cage_cli.models import DEFAULT_MODEL, create_model
    from cage_cli.preprocess import crop_faces

    _set_threads(case)
    o = _detect_options(case)
    mtcnn = MTCNN(keep_all=True, post_process=False, select_largest=False,
                  min_face_size=int(o.min_face), device="cpu")
    model = create_model(case.get("model", DEFAULT_MODEL), device="cpu")
    counts = {"frames": 0, "faces": 0}

    def one_frame(frame: np.ndarray) -> None:
        boxes, probs = mtcnn.detect(frame)
        counts["frames"] += 1
        if boxes is None:
            return
        h, w = frame.shape[:2]
        boxes = np.asarray(boxes, np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[(np.asarray(probs, np.float32) >= o.threshold) & (side >= o.min_face)]
        crops = crop_faces(Image.fromarray(frame), boxes, model.config)
        for i in range(len(crops)):
            model.predict(crops[i : i + 1])
        counts["faces"] += len(crops)

    start = _clock()
    for path in case["paths"]:
        if _is_video(path):
            vr = decord.VideoReader(path, ctx=decord.cpu(0))
            n = len(vr) if case.get("max_frames") is None else min(len(vr), case["max_frames"])
            for i in range(n):
                one_frame(vr[i].asnumpy())
        else:
            one_frame(load_image(path))
    return {**counts, **_since(start)}


def child_cage(case: dict) -> dict:
    from cage_cli.annotation.running.pipeline import AnnotateOptions, Pipeline, RunOptions

    run_kw = {k: case[k] for k in ("threads", "frames_per_batch", "batch_size", "buffer_mb")
              if case.get(k) is not None}
    model = {"model": case["model"]} if case.get("model") else {}
    if case.get("detect_every"):
        model["detect_every"] = case["detect_every"]
    options = AnnotateOptions(sampling=_sampling(case), detect=_detect_options(case), **model)
    pipeline = Pipeline(options, RunOptions(**run_kw))
    if case.get("idle"):  # imports and models only: the memory floor
        return {"frames": 0, "faces": 0, "wall_s": 0.0, "cpu_s": 0.0}
    frames = faces = 0
    errors = []
    start = _clock()
    for result in pipeline.run(_media_files(case)):
        frames += result.frames
        faces += result.rows.num_rows if result.rows is not None else 0
        if result.error:
            errors.append(f"{result.source}: {result.error}")
    return {"frames": frames, "faces": faces, **_since(start), "errors": errors,
            "torch_threads": __import__("torch").get_num_threads()}


def child_fer(case: dict) -> dict:
    # torch (facenet-pytorch) before TensorFlow: where both come from different installs,
    # importing them the other way round can crash the process.
    import facenet_pytorch  # noqa: F401
    import torch

    _set_threads(case)
    import cv2
    from fer.fer import FER

    # Headless OpenCV builds raise in waitKey, which Video.analyze calls for every frame; a
    # GUI build's waitKey(1) waits about 1 ms. destroyAllWindows runs in Video.__del__.
    cv2.waitKey = lambda *a: -1
    cv2.destroyAllWindows = lambda *a: None
    detector = FER(mtcnn=True)
    if case.get("rgb"):  # fer gives MTCNN OpenCV's BGR frames; cage (and MTCNN) expect RGB
        import numpy as np

        bgr_detect = detector._mtcnn.detect
        detector._mtcnn.detect = lambda img, *a, **k: bgr_detect(
            np.ascontiguousarray(img[..., ::-1]), *a, **k)
    counts = {"frames": 0, "faces": 0}
    detect = detector.detect_emotions

    def counted(img, *args, **kwargs):
        faces = detect(img, *args, **kwargs)
        counts["frames"] += 1
        counts["faces"] += len(faces)
        return faces

    detector.detect_emotions = counted
    how = []
    start = _clock()
    for path in case["paths"]:
        if _is_video(path):
            from fer.classes import Video

            Video(path, outdir=tempfile.mkdtemp()).analyze(
                detector, display=False, save_frames=False, save_video=False,
                annotate_frames=False, zip_images=False, output="pandas",
                max_results=case.get("max_frames"))
            how.append("Video.analyze")
        else:
            detector.detect_emotions(path)
            how.append("detect_emotions(path)")
    import fer

    return {**counts, **_since(start), "fer_version": fer.__version__, "fer_path": sorted(set(how)),
            "torch_threads": torch.get_num_threads()}


def _iou(a, b):
    import numpy as np

    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def child_recall(case: dict) -> dict:
    """Detection recall and time per frame for each max_side, interleaved frame by frame."""
    import numpy as np

    from cage_cli.annotation.detection.detect import Detector
    from cage_cli.annotation.io.decode import frames as decode_frames
    from cage_cli.annotation.io.decode import load_image
    from cage_cli.annotation.io.inputs import MediaFile

    _set_threads(case)

    sets: dict[str, list] = {"interview": [], "portraits": [], "interview 4K": []}
    every = case.get("every", 1)
    for f in decode_frames(MediaFile(case["video"], "video"), _sampling(case)):
        if f.index % every == 0:
            sets["interview"].append(f.image)
    sets["portraits"] = [load_image(p) for p in case["photos"]]
    # 4K: four interview frames tiled 2x2 into one 3840x2160 frame, so the faces keep their
    # 27-100 px. det max_side 960 alone would shrink a 40 px face to 10 px, below MTCNN's
    # 12 px window; the face_floor floor (0.4) keeps it at 16 px.
    frames_1080 = sets["interview"][:: case.get("every_4k", 2)]
    for k in range(0, len(frames_1080) - 3, 4):
        a, b, c, d = frames_1080[k : k + 4]
        sets["interview 4K"].append(np.concatenate([np.concatenate([a, b], 1),
                                                    np.concatenate([c, d], 1)], 0))
    sides = case["max_sides"] + [NO_FLOOR]
    detectors = {s: Detector(_detect_options({"max_side": s}), "cpu") for s in sides
                 if s != NO_FLOOR}
    detectors[NO_FLOOR] = Detector(_detect_options({"max_side": 960}, face_floor=float("inf")),
                                   "cpu")
    out = []
    for name, images in sets.items():
        stats = {s: {"times": [], "ref": 0, "found": 0, "ref_all": 0, "found_all": 0,
                     "detected": 0, "missed": []} for s in sides}
        for im in images:
            boxes = {}
            for s in sides:  # interleaved: every setting sees the same machine load
                t = time.perf_counter()
                faces = detectors[s].detect([im])[0]
                stats[s]["times"].append(time.perf_counter() - t)
                boxes[s] = (faces.boxes, faces.scores)
            ref, ref_scores = boxes[None]
            tall = (ref[:, 3] - ref[:, 1]) >= MIN_HEIGHT
            for s in sides:
                b = boxes[s][0]
                hit = (_iou(ref, b).max(axis=1) >= 0.5) if len(b) and len(ref) else \
                    np.zeros(len(ref), bool)
                st = stats[s]
                st["ref"] += int(tall.sum())
                st["found"] += int((hit & tall).sum())
                st["ref_all"] += len(ref)
                st["found_all"] += int(hit.sum())
                st["detected"] += len(b)
                st["missed"] += [[round(float(ref[i, 3] - ref[i, 1])),
                                  round(float(ref_scores[i]), 3)]
                                 for i in np.flatnonzero(tall & ~hit)]
        for s in sides:
            st = stats[s]
            out.append({"set": name, "images": len(images),
                        "size": "x".join(map(str, images[0].shape[1::-1])) if images else "",
                        "max_side": s, "faces_40px": st["ref"],
                        "recall_40px": st["found"] / st["ref"] if st["ref"] else None,
                        "faces_all": st["ref_all"],
                        "recall_all": st["found_all"] / st["ref_all"] if st["ref_all"] else None,
                        "detected": st["detected"],
                        "s_per_frame": float(np.median(st["times"])) if images else None,
                        "time_vs_full": float(np.median(np.array(st["times"])
                                                        / np.array(stats[None]["times"])))
                        if images else None,
                        "missed_40px_height_score": st["missed"]})
    return {"rows": out}


CHILDREN = {"decode": child_decode, "detect": child_detect, "infer": child_infer,
            "naive": child_naive, "cage": child_cage, "fer": child_fer, "recall": child_recall}


def child_main(spec: str) -> None:
    case = json.loads(spec)
    result = CHILDREN[case["kind"]](case)
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent side: inputs, scheduling, tables.


def make_inputs(tmp: Path, quick: bool, interview_frames: int) -> dict[str, dict]:
    """Derived inputs (mp4s via PyAV): looped short_clip, interview at 3 heights, tiled faces."""
    import av
    import numpy as np
    from PIL import Image

    def write(path: Path, images: list, fps: float = 25.0) -> str:
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=round(fps))
            stream.height, stream.width = images[0].shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for im in images:
                for packet in stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return str(path)

    def read(path: Path, n: int | None = None) -> list:
        frames = []
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
                if n is not None and len(frames) >= n:
                    break
        return frames

    made: dict[str, dict] = {}
    clip = read(MEDIA / "short_clip.mp4", 16 if quick else None)
    for k in LENGTHS:
        made[f"length_{k}x"] = {"paths": [write(tmp / f"loop_{k}x.mp4", clip * k, 25)],
                                "label": f"short_clip x{k} ({len(clip) * k} frames)"}
    n = 3 if quick else max(1, (interview_frames or 105) // 3)
    full = read(MEDIA / "interview.mp4", n)
    for height in (480, 720, 1080):
        w = round(1920 * height / 1080 / 2) * 2
        scaled = [np.asarray(Image.fromarray(f).resize((w, height), Image.Resampling.BILINEAR,
                                                       reducing_gap=3.0)) for f in full]
        made[f"res_{height}p"] = {"paths": [write(tmp / f"interview_{height}p.mp4", scaled)],
                                  "label": f"interview {w}x{height} ({n} frames)"}
    face = Image.open(MEDIA / "single_face.jpg").convert("RGB")
    side, n = 768, (3 if quick else 12)
    for k in (1, 2, 3):
        tile = side // k
        canvas = Image.new("RGB", (side, side))
        small = face.resize((tile, tile), Image.Resampling.BILINEAR, reducing_gap=3.0)
        for i in range(k):
            for j in range(k):
                canvas.paste(small, (j * tile, i * tile))
        made[f"tiles_{k}x{k}"] = {"paths": [write(tmp / f"tiles_{k}x{k}.mp4",
                                                  [np.asarray(canvas)] * n)],
                                  "label": f"{side}x{side}, {k}x{k} tiles ({n} frames)"}
    return made


class Machine:
    """Other processes' CPU use, from /proc/stat (machine-wide) minus our children's."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ok = Path("/proc/stat").exists()

    def _stat(self) -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)  # busy, total jiffies (all CPUs)

    @staticmethod
    def _children_cpu() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def start(self) -> tuple:
        return (self._stat(), self._children_cpu()) if self.ok else ()

    def others(self, start: tuple) -> float | None:
        """Share of the machine's CPU (0-1) used by other processes since ``start``."""
        if not start:
            return None
        (busy0, total0), own0 = start
        busy1, total1 = self._stat()
        own = (self._children_cpu() - own0) * self.hz
        return max(0.0, (busy1 - busy0 - own) / max(1, total1 - total0))

    def wait_quiet(self, budget: list[float], limit: float = 0.25) -> float:
        """Wait (from ``budget[0]`` seconds left) while others use more than ``limit``."""
        waited = 0.0
        while self.ok and budget[0] > 0:
            s = self.start()
            time.sleep(1.0)
            if (self.others(s) or 0) <= limit:
                break
            waited += 1.0
            budget[0] -= 1.0
        return waited


def run_cli(case: dict, timeout: float, cwd: str, machine: Machine) -> dict:
    """``cage annotate`` itself, as a user runs it: imports, models, the Parquet output and the
    exit, all in the process's wall time (``process_s``); CPU and peak RSS from wait4."""
    out = Path(cwd) / "cli.parquet"
    cmd = [sys.executable, "-m", "cage_cli", "annotate", *case["paths"], "-o", str(out),
           "--overwrite", "-q"]
    if case.get("max_frames"):
        cmd += ["--max-frames", str(case["max_frames"])]
    mark = machine.start()
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        elapsed = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().strip().splitlines()[-3:]
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    import pyarrow.parquet as pq

    return {"faces": pq.read_metadata(out).num_rows, "process_s": elapsed, "wall_s": elapsed,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "others_cpu": machine.others(mark)}


def run_case(case: dict, python: str, timeout: float, cwd: str, machine: Machine) -> dict:
    """Run one case in a fresh process; its RESULT, or an error."""
    if case["kind"] == "cli":
        return run_cli(case, timeout, cwd, machine)
    cmd = [python, str(Path(__file__).resolve()), "--child", json.dumps(case)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    mark = machine.start()
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    elapsed = time.perf_counter() - t
    others = machine.others(mark)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result.update(process_s=elapsed, others_cpu=others)
            return result
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {p.returncode}: " + " | ".join(tail)}


def fer_available(python: str) -> str | None:
    """None if ``python`` can run the fer case, else why not."""
    if not Path(python).exists():
        return f"{python} not found (set CAGE_FER_PYTHON)"
    code = "import facenet_pytorch, torch, cv2; from fer.fer import FER; import fer.classes"
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    except subprocess.TimeoutExpired:
        return f"{python}: importing fer timed out"
    if p.returncode:
        lines = [x for x in p.stderr.strip().splitlines() if "Error" in x] or ["failed"]
        return f"{python} cannot import fer, fer.classes and facenet-pytorch: {lines[-1]}"
    return None


def summarize(runs: list[dict]) -> dict:
    """The run with the median wall time, its rates, the fps range; peak RSS: the largest."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1] if runs else {"error": "not run"}
    ok = sorted(ok, key=lambda r: r["wall_s"])
    mid = dict(ok[(len(ok) - 1) // 2])
    mid["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
    mid["runs"] = len(ok)
    mid["wall_s_all"] = [round(r["wall_s"], 3) for r in ok]
    others = [r["others_cpu"] for r in ok if r.get("others_cpu") is not None]
    mid["others_cpu_max"] = max(others) if others else None
    if mid["wall_s"] and mid.get("frames"):
        mid["frames_per_s"] = mid["frames"] / mid["wall_s"]
        mid["frames_per_s_range"] = [ok[-1]["frames"] / ok[-1]["wall_s"],
                                     ok[0]["frames"] / ok[0]["wall_s"]]
        faces = mid.get("faces")
        mid["faces_per_s"] = faces / mid["wall_s"] if faces is not None else None
        mid["cpu_ms_per_frame"] = 1000 * mid["cpu_s"] / mid["frames"]
    return mid


def env_info() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1min_start": os.getloadavg()[0],
            "gpu": "none: GPU throughput (fp32 vs fp16) and GPU busy time not measured"}


def cage_defaults() -> dict:
    """The speed-related defaults of the cage under test."""
    from dataclasses import asdict

    from cage_cli.annotation.detection.detect import DetectOptions
    from cage_cli.annotation.running.pipeline import AnnotateOptions, RunOptions

    d = DetectOptions()
    return {"detect_every": AnnotateOptions().detect_every, "det_max_side": d.max_side,
            "det_face_floor": d.face_floor, "min_face": d.min_face,
            "threshold": d.threshold,
            **{k: v for k, v in asdict(RunOptions()).items()}}


def headline_cases(name: str) -> list[tuple[str, dict]]:
    """(label, case) for one input: the stages, the baselines, cage's configurations."""
    cases = [("decode", {"kind": "decode"}),
             ("detect", {"kind": "detect"}),
             ("infer", {"kind": "infer"}),
             ("naive", {"kind": "naive"}),
             ("fer", {"kind": "fer"}),
             ("cage default", {"kind": "cage"}),
             ("cage annotate", {"kind": "cli"}),
             ("cage detect-every 1", {"kind": "cage", "detect_every": 1}),
             ("cage threads 1", {"kind": "cage", "threads": 1})]
    if name == "short_clip":  # already below every max_side: show detector input and model
        cases.insert(2, ("detect BGR (as fer)", {"kind": "detect", "bgr": True}))
        cases.insert(6, ("fer, RGB to MTCNN", {"kind": "fer", "rgb": True}))
        cases.append(("cage fer-mini-xception", {"kind": "cage", "model": "fer-mini-xception"}))
    else:
        alt = alt_max_side()
        cases.append((f"cage max_side {alt}", {"kind": "cage", "max_side": alt}))
    return cases


def alt_max_side() -> int:
    """The det max_side compared with cage's default on the large inputs."""
    from cage_cli.annotation.detection.detect import DetectOptions

    return 1280 if DetectOptions().max_side == 960 else 960


def cage_configs() -> tuple[str, ...]:
    """The cage configurations measured."""
    return ("cage default", "cage detect-every 1", "cage threads 1", "cage fer-mini-xception",
            f"cage max_side {alt_max_side()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke run on a few frames")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the headline cases")
    ap.add_argument("--interview-frames", type=int, default=None,
                    help="frames of interview.mp4 (default: all 105)")
    ap.add_argument("--inputs", default="short_clip,interview,photos",
                    help="headline inputs, comma-separated")
    ap.add_argument("--cases", help="headline cases, comma-separated labels (default: all)")
    ap.add_argument("--sections", default="headline,scaling,recall",
                    help="comma-separated: headline, scaling, recall, contention (not run by "
                         "default: 2 vs 1 worker threads while another process spins on a core)")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="seconds in all to wait for other processes to calm down before cases")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return

    sections = set(args.sections.split(","))
    quick = args.quick
    repeats = 1 if quick else args.repeats
    fer_python = os.environ.get("CAGE_FER_PYTHON", FER_PYTHON)
    fer_missing = fer_available(fer_python) if "headline" in sections else None
    if fer_missing:
        print(f"fer: skipped: {fer_missing}", file=sys.stderr)
    interview_frames = 4 if quick else args.interview_frames
    chosen = set(args.inputs.split(","))
    cases = set(args.cases.split(",")) if args.cases else None
    photos = [str(MEDIA / p) for p in (PHOTOS[:2] if quick else PHOTOS)]
    inputs = {
        "short_clip": {"paths": [str(MEDIA / "short_clip.mp4")],
                       "max_frames": 16 if quick else None},
        "interview": {"paths": [str(MEDIA / "interview.mp4")], "max_frames": interview_frames},
        "photos": {"paths": photos},
    }
    started = time.perf_counter()
    env = env_info()
    env["cage_defaults"] = cage_defaults()
    machine = Machine()
    wait_budget = [args.quiet_wait]
    tmp = Path(tempfile.mkdtemp(prefix="cage-throughput-"))
    results: dict = {"environment": env, "quick": quick, "repeats": repeats,
                     "interview_frames": interview_frames, "fer_python": fer_python,
                     "fer_skipped": fer_missing}

    def measure(label: str, case: dict, runs: dict, wait: bool = True) -> None:
        waited = machine.wait_quiet(wait_budget) if wait else 0.0
        python = fer_python if case["kind"] == "fer" else sys.executable
        r = run_case(case, python, args.timeout, str(tmp), machine)
        r["waited_s"] = waited
        runs.setdefault(label, []).append(r)
        if "error" in r:
            msg = r["error"]
        elif "frames" in r:
            msg = (f"{r['frames']} frames, {r.get('faces')} faces, {r['wall_s']:.1f} s, "
                   f"{r['peak_rss_mib']:.0f} MiB")
        else:
            msg = f"{r['process_s']:.0f} s, {r['peak_rss_mib']:.0f} MiB"
        if r.get("others_cpu") is not None:
            msg += f", others {100 * r['others_cpu']:.0f}% CPU"
        print(f"  [{time.perf_counter() - started:5.0f} s] {label}: {msg}", file=sys.stderr,
              flush=True)

    try:
        if "headline" in sections:
            runs: dict = {}
            measure("idle|cage imports + models", {"kind": "cage", "paths": [], "idle": True},
                    runs)
            for rnd in range(repeats):
                print(f"headline round {rnd + 1}/{repeats}", file=sys.stderr)
                for name, inp in inputs.items():
                    if name not in chosen:
                        continue
                    base = {k: v for k, v in inp.items() if v is not None}
                    boxes = str(tmp / f"boxes_{name}.json")
                    for label, extra in headline_cases(name):
                        if extra["kind"] == "fer" and fer_missing or \
                                cases and label not in cases:
                            continue
                        case = {**base, **extra}
                        if label == "detect":
                            case["boxes_out"] = boxes
                        if label == "infer":
                            case["boxes_in"] = boxes
                        measure(f"{name}|{label}", case, runs)
            results["headline"] = {k: summarize(v) for k, v in runs.items()}

        if "scaling" in sections:
            made = make_inputs(tmp, quick, interview_frames)
            runs = {}
            for key, inp in list(made.items()):
                measure(key, {"kind": "cage", "paths": inp["paths"]}, runs)
            results["scaling"] = {k: {**summarize(v), "label": made[k]["label"]}
                                  for k, v in runs.items()}

        if "contention" in sections:
            # Another busy process on one core (as on a shared machine): 2 vs 1 worker threads.
            inp = {"paths": inputs["short_clip"]["paths"], "max_frames": 8 if quick else 32}
            runs = {}
            for hog in (False, True):
                proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog \
                    else None
                try:
                    for threads in (2, 1):
                        measure(f"{'1 busy process' if hog else 'none'}|threads {threads}",
                                {"kind": "cage", **inp, "threads": threads}, runs,
                                wait=not hog)
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
            results["contention"] = {k: summarize(v) for k, v in runs.items()}

        if "recall" in sections:
            case = {"kind": "recall", "video": str(MEDIA / "interview.mp4"),
                    "max_frames": interview_frames if quick else None, "every": 3,
                    "photos": [str(MEDIA / p) for p in (PORTRAITS[:1] if quick else PORTRAITS)],
                    "max_sides": list(MAX_SIDES)}
            runs = {}
            measure("recall", case, runs)
            results["recall"] = runs["recall"][-1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    env["load_average_1min_end"] = os.getloadavg()[0]
    env["total_s"] = time.perf_counter() - started
    env["quiet_wait_s"] = args.quiet_wait - wait_budget[0]
    results["targets"] = targets(results)
    report = render(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(report + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Targets and report.


def _fps(results: dict, key: str) -> float | None:
    return results.get("headline", {}).get(key, {}).get("frames_per_s")


def targets(results: dict) -> list[dict]:
    """Each target: what was compared, the measured ratio or size, met or not."""
    rows = []
    head = results.get("headline", {})

    def add(target: str, value: float, text: str, met: bool) -> None:
        rows.append({"target": target, "value": value, "measured": text, "met": met})

    for name in ("short_clip", "interview"):  # issue 18: the default on each video
        fps = _fps(results, f"{name}|cage default")
        fer, naive = _fps(results, f"{name}|fer"), _fps(results, f"{name}|naive")
        if fps and fer:
            add(f"cage default >= 3x fer frames/s ({name})", fps / fer,
                f"{fps / fer:.2f}x ({fps:.2f} vs {fer:.2f} frames/s)", fps / fer >= 3)
        if fps and naive:
            add(f"cage default >= 2.5x naive frames/s ({name})", fps / naive,
                f"{fps / naive:.2f}x ({fps:.2f} vs {naive:.2f} frames/s)", fps / naive >= 2.5)
        whole = {c: head.get(f"{name}|{c}", {}).get("process_s")
                 for c in ("cage annotate", "naive", "fer")}
        cli = whole.pop("cage annotate")
        for other, goal in (("fer", 3), ("naive", 2.5)):
            if cli and whole[other]:
                ratio = whole[other] / cli
                add(f"cage annotate >= {goal}x {other}, whole processes ({name})", ratio,
                    f"{ratio:.2f}x ({cli:.2f} vs {whole[other]:.2f} s)", ratio >= goal)
    for name in ("short_clip", "interview", "photos"):
        stages = {s: _fps(results, f"{name}|{s}") for s in ("decode", "detect", "infer")}
        cage = _fps(results, f"{name}|cage default")
        if all(stages.values()) and cage:
            slow = min(stages, key=stages.get)
            ratio = cage / stages[slow]
            add(f"cage default >= 80% of its slowest stage ({name}: {slow})", ratio,
                f"{100 * ratio:.0f}% ({cage:.2f} vs {stages[slow]:.2f} frames/s)", ratio >= 0.8)
    rss = head.get("interview|cage default", {}).get("peak_rss_mib")
    if rss:
        add("peak RSS < 2 GB (interview.mp4, cage default)", rss, f"{rss:.0f} MiB", rss < 2000)
    sc = results.get("scaling", {})
    lengths = [sc.get(f"length_{k}x", {}).get("peak_rss_mib") for k in LENGTHS]
    if all(lengths):
        # Frames in flight fill the decode buffer (RunOptions.buffer_mb) once the video holds
        # more than it; from there on memory must not grow.
        from cage_cli.annotation.running.pipeline import RunOptions

        buffer_mb = RunOptions().buffer_mb
        growth = lengths[-1] - lengths[1]
        add(f"peak RSS flat as the video gets longer ({'x/'.join(map(str, LENGTHS))}x; "
            f"growth from {LENGTHS[1]}x to {LENGTHS[-1]}x under 5%, and under buffer_mb "
            f"{buffer_mb} from {LENGTHS[0]}x)", growth,
            " / ".join(f"{x:.0f}" for x in lengths) + f" MiB ({growth:+.0f} MiB from "
            f"{LENGTHS[1]}x to {LENGTHS[-1]}x)",
            abs(growth) < 0.05 * lengths[1] and lengths[-1] - lengths[0] < buffer_mb)
    return rows


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _others(r: dict) -> str:
    v = r.get("others_cpu_max")
    return "-" if v is None else f"{100 * v:.0f}%"


def render(results: dict) -> str:
    env = results["environment"]
    out = [f"# Throughput ({'quick smoke run' if results['quick'] else 'full run'})", "",
           f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} "
           f"({env['torch_threads_default']} threads by default), Python {env['python']}, "
           f"{env['date']}. Load average {env['load_average_1min_start']:.1f} at the start, "
           f"{env['load_average_1min_end']:.1f} at the end; {env['quiet_wait_s']:.0f} s spent "
           f"waiting for other processes to calm down; {env['total_s'] / 60:.1f} min in all. "
           f"No GPU: GPU throughput (fp32 vs fp16) and GPU busy time were not measured.", ""]
    head = results.get("headline")
    if head:
        if results.get("fer_skipped"):
            out += [f"fer: skipped ({results['fer_skipped']}).", ""]
        rows = []
        idle = head.get("idle|cage imports + models", {})
        for key, r in head.items():
            name, label = key.split("|")
            if name == "idle":
                continue
            if "error" in r:
                rows.append([name, label, "error: " + r["error"][:100]] + [None] * 10)
                continue
            naive = _fps(results, f"{name}|naive")
            fps = r.get("frames_per_s")
            lo, hi = r.get("frames_per_s_range", [None, None])
            naive_s = head.get(f"{name}|naive", {}).get("process_s")
            whole = r.get("process_s")
            rows.append([name, label, r.get("frames"), r["faces"], fps,
                         f"{lo:.2f}-{hi:.2f}" if lo else "-", r.get("faces_per_s"),
                         r.get("cpu_ms_per_frame"), f"{r['peak_rss_mib']:.0f}",
                         fps / naive if fps and naive else None, whole,
                         naive_s / whole if whole and naive_s else None, _others(r)])
        out += ["## Pipelines and stages", "",
                f"cage defaults: {results['environment'].get('cage_defaults')}.", "",
                f"Lower median of {results['repeats']} interleaved round(s) (of 2: the "
                "faster); frames/s range over the rounds. Wall time from the first frame read "
                "to the last prediction (imports and model loading excluded). Stages alone: "
                "decode = cage_cli.annotation.io.decode.frames; detect = cage's Detector on "
                "pre-decoded frames (default max_side); infer = the default model on pre-cut "
                "crops in batches of 64 (frames/s: the frames those crops came from). CPU ms/frame "
                "counts all threads. 'whole s': the case's process from start to exit "
                "(imports, models and exit included); 'cage annotate' is the command itself, "
                "writing Parquet. Peak RSS per process; imports and models alone: "
                f"{idle.get('peak_rss_mib', 0):.0f} MiB. 'others': the most CPU that other "
                "processes used during a round of that case, as a share of the machine.", "",
                table(["input", "case", "frames", "faces", "frames/s", "range", "faces/s",
                       "CPU ms/frame", "peak RSS MiB", "x naive", "whole s",
                       "x naive (whole)", "others"], rows), ""]
    if results.get("targets"):
        out += ["## Targets", "",
                table(["target", "measured", "status"],
                      [[t["target"], t["measured"], "met" if t["met"] else "NOT met"]
                       for t in results["targets"]]), ""]
    sc = results.get("scaling")
    if sc:
        for prefix, title in (("res_", "Resolution (interview.mp4 scaled, cage defaults)"),
                              ("tiles_", "Faces per frame (single_face.jpg tiled in equal "
                                         "frames, cage defaults)"),
                              ("length_", "Video length (short_clip.mp4 looped, cage defaults)")):
            rows = [[r["label"], r.get("frames"), r.get("faces"), r.get("frames_per_s"),
                     r.get("faces_per_s"), r.get("cpu_ms_per_frame"),
                     f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else r.get("error"),
                     _others(r)] for k, r in sc.items() if k.startswith(prefix)]
            out += [f"## {title}", "",
                    table(["input", "frames", "faces", "frames/s", "faces/s", "CPU ms/frame",
                           "peak RSS MiB", "others"], rows), ""]
    con = results.get("contention")
    if con:
        rows = [[k.split("|")[0], k.split("|")[1], r.get("frames"), r.get("frames_per_s"),
                 r.get("cpu_ms_per_frame"), _others(r)] for k, r in con.items()]
        out += ["## Sharing the CPU (short_clip, cage defaults but --threads)", "",
                "With another process spinning on one of the cores (started by the benchmark), "
                "as on a machine shared with other jobs.", "",
                table(["other busy processes", "threads", "frames", "frames/s",
                       "CPU ms/frame", "others"], rows), ""]
    rec = results.get("recall")
    if rec and "rows" in rec:
        rows = []
        for r in rec["rows"]:
            missed = r["missed_40px_height_score"]
            rows.append([r["set"], f"{r['images']} portraits" if r["set"] == "portraits"
                         else f"{r['images']} x {r['size']}",
                         "full" if r["max_side"] is None else r["max_side"], r["faces_40px"],
                         r["recall_40px"], r["faces_all"], r["recall_all"], r["detected"],
                         r["s_per_frame"], r["time_vs_full"],
                         ", ".join(f"{h} px ({s:.2f})" for h, s in missed) if missed else "-"])
        out += ["## Detection at reduced resolution (det max_side)", "",
                "Reference: cage's MTCNN (threshold 0.9, min face 20 px) at full resolution. "
                f"Recall: reference faces found again (IoU >= 0.5), for faces at least "
                f"{MIN_HEIGHT} px tall at full resolution and for all reference faces. s/frame: "
                "median over frames, one frame per detector call, the settings interleaved "
                "frame by frame; time vs full: median over frames of the time relative to "
                "full resolution (robust to other load). Missed: height at full resolution "
                "(full-resolution score). max_side values above 4K's 0.4 floor (1536 px) "
                "give the same detections there.", "",
                table(["set", "frames", "max_side", f"faces >= {MIN_HEIGHT} px",
                       f"recall >= {MIN_HEIGHT} px", "faces (all)", "recall (all)",
                       "detections", "s/frame", "time vs full", f"missed >= {MIN_HEIGHT} px"],
                      rows), ""]
    elif rec:
        out += ["## Detection at reduced resolution", "", f"error: {rec.get('error')}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
