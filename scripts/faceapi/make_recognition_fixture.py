"""Build tests/fixtures/faceapi_recognition_reference.npz: aligned faces, face-api descriptors.

Dev only; needs the Node reference (``cd scripts/faceapi && npm ci``) and /work/shared/media.

1. Detects faces with cage's own MTCNN (cage_cli.annotation.detection.detect.Detector, default
   options) in the shared photos and a few frames of the shared videos (decord).
2. Aligns every face on its five landmarks (cage_cli.annotation.identity.embed.face_crops: 150x150
   uint8, the crop cage feeds the model).
3. Runs scripts/faceapi/run_reference.js --net recognition (face-api 1.7.15, tfjs 4.22.0, cpu
   backend, offline) on exactly those crops: face-api's FaceRecognitionNet.forwardInput, whose
   output computeFaceDescriptor returns (-> ``descriptors``, what the port must reproduce).

Saved arrays: inputs (N,150,150,3) uint8; descriptors (N,128) float32; landmarks (N,5,2) and
boxes (N,4) float32 (frame pixels); sources (N,) str ("file.jpg" or "video.mp4#frame");
versions (str).

    python scripts/faceapi/make_recognition_fixture.py [--node-path DIR/node_modules]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from make_fixture import MEDIA, run_node  # noqa: E402

from cage_cli.annotation.detection.detect import DetectOptions, Detector  # noqa: E402
from cage_cli.annotation.identity.embed import face_crops  # noqa: E402

PHOTOS = ["single_face.jpg", "multiface.jpg", "portrait_angelina_jolie.jpg",
          "portrait_kate_siegel.jpg", "portrait_paul_rudd.jpg", "portrait_shea_whigham.jpg"]
VIDEO_FRAMES = {"short_clip.mp4": [0, 60], "interview.mp4": [0, 100]}
OUT = REPO / "tests/fixtures/faceapi_recognition_reference.npz"


def frames(media: Path) -> list[tuple[str, np.ndarray, bool]]:
    """(source name, RGB uint8 frame, is a photo) for every photo and the chosen video frames."""
    import decord
    from PIL import Image

    out = [(n, np.asarray(Image.open(media / n).convert("RGB")), True) for n in PHOTOS]
    for name, idx in VIDEO_FRAMES.items():
        vr = decord.VideoReader(str(media / name))
        out += [(f"{name}#{i}", vr[i].asnumpy(), False) for i in idx]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", type=Path, default=MEDIA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--node-path", type=Path, default=None,
                    help="node_modules holding @vladmandic/face-api (default: scripts/faceapi's)")
    args = ap.parse_args()

    detector = Detector(DetectOptions(), "cpu")
    inputs, marks, boxes, sources = [], [], [], []
    for name, frame, photo in frames(args.media):
        (faces,) = detector([frame], [photo])
        if not len(faces):
            continue
        inputs.append(face_crops(frame, faces.landmarks))
        marks.append(faces.landmarks)
        boxes.append(faces.boxes)
        sources += [name] * len(faces)
    crops = np.concatenate(inputs)
    print(f"{len(crops)} faces from {len(set(sources))} frames")

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.save(t / "crops.npy", crops)
        ref = run_node([t / "crops.npy"], t / "crops.json", args.node_path,
                       ["--net", "recognition"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        inputs=crops,
        descriptors=np.asarray(ref["descriptors"], np.float32),
        landmarks=np.concatenate(marks).astype(np.float32),
        boxes=np.concatenate(boxes).astype(np.float32),
        sources=np.asarray(sources),
        versions=np.asarray(f"face-api {ref['versions']['faceapi']}, tfjs {ref['versions']['tfjs']}"
                            f", backend {ref['backend']}"),
    )
    print(f"-> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
