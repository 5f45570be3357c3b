"""Build tests/fixtures/faceapi_expression_reference.npz: face crops + face-api.js's own output.

Dev only; needs the Node reference (``cd scripts/faceapi && npm ci``) and /work/shared/media.

1. Detects faces with facenet-pytorch MTCNN (default thresholds, keep_all) in the shared photos
   and in a few frames of the shared videos (decord); boxes are clipped to the frame, as
   face-api's extractFaceTensors does.
2. Crops every face with ``cage_cli.preprocess.crop_faces`` and the ``faceapi-expression``
   config (uint8, 112x112x3: box as is, centred black padding to a square, TF bilinear resize).
3. Runs scripts/faceapi/run_reference.js (face-api 1.7.15, tfjs 4.22.0, cpu backend, offline)
   twice: on exactly those uint8 crops (-> ``probabilities``, ``logits``: what the port must
   reproduce), and on the unresized box crops so that face-api pads and resizes them itself
   (-> ``e2e_probabilities``: checks our crop pipeline; ours differs only by rounding the
   resized crop to uint8).

Saved arrays: inputs (N,112,112,3) uint8; probabilities, logits, e2e_probabilities (N,7)
float32 in face-api's order (``labels``); boxes (N,4) float32 (clipped x1,y1,x2,y2 in the
frame); sources (N,) str ("file.jpg" or "video.mp4#frame"); versions (str).

    python scripts/faceapi/make_fixture.py [--node-path DIR/node_modules]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cage_cli.models import get_config  # noqa: E402
from cage_cli.preprocess import crop_faces  # noqa: E402

MEDIA = Path("/work/shared/media")
PHOTOS = ["single_face.jpg", "multiface.jpg", "no_faces.jpg", "portrait_angelina_jolie.jpg",
          "portrait_kate_siegel.jpg", "portrait_paul_rudd.jpg", "portrait_shea_whigham.jpg"]
VIDEO_FRAMES = {"short_clip.mp4": [0, 20, 40, 60, 80, 100], "interview.mp4": [0, 50, 100]}
OUT = REPO / "tests/fixtures/faceapi_expression_reference.npz"
RUNNER = Path(__file__).resolve().parent / "run_reference.js"


def frames(media: Path) -> list[tuple[str, np.ndarray]]:
    """(source name, RGB uint8 frame) for every photo and the chosen video frames."""
    import decord

    out = [(name, np.asarray(Image.open(media / name).convert("RGB"))) for name in PHOTOS]
    for name, idx in VIDEO_FRAMES.items():
        vr = decord.VideoReader(str(media / name))
        out += [(f"{name}#{i}", vr[i].asnumpy()) for i in idx]
    return out


def detect(mtcnn, frame: np.ndarray) -> np.ndarray:
    """MTCNN boxes (K, 4) float32, clipped to the frame."""
    boxes, _ = mtcnn.detect(frame)
    if boxes is None:
        return np.zeros((0, 4), np.float32)
    boxes = np.asarray(boxes.tolist(), np.float32)  # facenet-pytorch may return dtype=object
    h, w = frame.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def run_node(files: list[Path], out_json: Path, node_path: Path | None,
             options: list[str] | None = None) -> dict:
    env = dict(os.environ)
    if node_path is not None:
        env["NODE_PATH"] = str(node_path)
    subprocess.run(["node", str(RUNNER), "--out", str(out_json), *(options or []),
                    *map(str, files)], check=True, env=env)
    return json.loads(out_json.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", type=Path, default=MEDIA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--node-path", type=Path, default=None,
                    help="node_modules holding @vladmandic/face-api (default: scripts/faceapi's)")
    args = ap.parse_args()

    from facenet_pytorch import MTCNN

    config = get_config("faceapi-expression")
    mtcnn = MTCNN(keep_all=True, device="cpu")
    inputs, raws, boxes, sources = [], [], [], []
    for name, frame in frames(args.media):
        b = detect(mtcnn, frame)
        if not len(b):
            continue
        inputs.append(crop_faces(Image.fromarray(frame), b, config).numpy())
        for box in b:
            # The same integer region crop_face cuts (no margin; the box is inside the frame).
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            raws.append(np.ascontiguousarray(frame[y1:y2, x1:x2]))
            boxes.append(box)
            sources.append(name)
    crops = np.concatenate(inputs)
    print(f"{len(crops)} faces from {len(set(sources))} frames")

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.save(t / "crops.npy", crops)
        raw_files = []
        for i, r in enumerate(raws):
            raw_files.append(t / f"raw{i:03d}.npy")
            np.save(raw_files[-1], r)
        ref = run_node([t / "crops.npy"], t / "crops.json", args.node_path)
        e2e = run_node(raw_files, t / "raw.json", args.node_path)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        inputs=crops,
        probabilities=np.asarray(ref["probabilities"], np.float32),
        logits=np.asarray(ref["logits"], np.float32),
        e2e_probabilities=np.asarray(e2e["probabilities"], np.float32),
        boxes=np.stack(boxes).astype(np.float32),
        sources=np.asarray(sources),
        labels=np.asarray(ref["labels"]),
        versions=np.asarray(f"face-api {ref['versions']['faceapi']}, tfjs {ref['versions']['tfjs']}"
                            f", backend {ref['backend']}"),
    )
    print(f"-> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
