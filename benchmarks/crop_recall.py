"""How often MTCNN finds the face in a tight face crop, plain and on padded copies.

Makes tight square crops (the detector's own box, tighter, and a little looser) of the faces
found in ../shared/media at 48, 64, 112 and 224 px, then runs MTCNN on each crop as it is and with a
black border of several sizes. The result chooses --detector auto's padding and its
whole-image size limit (docs/performance.md).

    python benchmarks/crop_recall.py            # prints a table, writes benchmarks/results/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cage_cli.annotation.detection.detect import DetectOptions, Detector
from cage_cli.annotation.io.decode import load_image

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
SIZES = (48, 64, 112, 224)
#: Margin around the detector's box, as a fraction of its side: negative crops tighter than
#: MTCNN's box (as many face datasets do), 0 is the box itself.
MARGINS = (-0.2, -0.1, 0.0, 0.1)
PADS = (0.0, 0.1, 0.25, 0.35, 0.5)


def face_crops(detector: Detector) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, full image, box) for every face MTCNN finds in the shared photos."""
    out = []
    for path in sorted(MEDIA.glob("*.jpg")):
        image = load_image(str(path))
        faces = detector.detect([image])[0]
        for i, box in enumerate(faces.boxes):
            if min(box[2] - box[0], box[3] - box[1]) >= 40:
                out.append((f"{path.name}#{i}", image, box))
    return out


def tight_crop(image: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    m = margin * side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = side / 2 + m
    region = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    return np.asarray(Image.fromarray(image).crop(region).resize((size, size),
                                                                 Image.Resampling.BILINEAR))


def found(detector: Detector, crop: np.ndarray, pad: float) -> bool:
    h, w = crop.shape[:2]
    py, px = int(round(h * pad)), int(round(w * pad))
    padded = np.zeros((h + 2 * py, w + 2 * px, 3), np.uint8)
    padded[py : py + h, px : px + w] = crop
    return len(detector.detect([padded])[0]) > 0


def main() -> None:
    detector = Detector(DetectOptions(max_side=None))
    auto = Detector(DetectOptions(detector="auto", max_side=None))
    chosen = DetectOptions()
    faces = face_crops(detector)
    rows = []
    for size in SIZES:
        for margin in MARGINS:
            crops = [tight_crop(img, box, size, margin) for _, img, box in faces]
            hits = {pad: sum(found(detector, c, pad) for c in crops) for pad in PADS}
            sources = [auto([c])[0].source if len(auto([c])[0]) else "none" for c in crops]
            rows.append({"size": size, "margin": margin, "faces": len(crops),
                         **{f"pad_{p}": hits[p] / len(crops) for p in PADS},
                         "auto_detected": sum(s in ("detected", "padded") for s in sources)
                         / len(crops),
                         "auto_any": sum(s != "none" for s in sources) / len(crops)})
    header = ["size", "margin", "faces", *[f"pad_{p}" for p in PADS], "auto_detected",
              "auto_any"]
    print(f"auto: pads {chosen.pads}, whole-image fallback up to {chosen.whole_max_side} px")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(
            f"{r[h]:.2f}" if isinstance(r[h], float) else str(r[h]) for h in header) + " |")
    out = Path(__file__).parent / "results" / "crop_recall.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"faces": [n for n, _, _ in faces], "pads": chosen.pads,
                               "whole_max_side": chosen.whole_max_side, "rows": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
