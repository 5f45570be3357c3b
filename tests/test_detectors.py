"""Faces that fill the frame: --detector none and --detector auto on tight face crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MULTI, NOFACE, SINGLE, cage, read
from PIL import Image

from cage_cli.annotation.detection.detect import DetectOptions, Detector
from cage_cli.annotation.io.decode import load_image

SIZES = (48, 64, 112, 224)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Tight square crops of every face MTCNN finds in single_face.jpg and multiface.jpg,
    at 48-224 px, exactly the box and with 4 px of margin."""
    d = tmp_path_factory.mktemp("crops")
    det = Detector(DetectOptions(max_side=None))
    for src in (SINGLE, MULTI):
        image = load_image(str(src))
        for i, (x1, y1, x2, y2) in enumerate(det.detect([image])[0].boxes):
            side = max(x2 - x1, y2 - y1)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            for size in SIZES:
                for margin in (0, 4):
                    half = side / 2 + margin * side / size
                    box = (cx - half, cy - half, cx + half, cy + half)
                    crop = Image.fromarray(image).crop(tuple(int(round(v)) for v in box))
                    name = f"{src.stem}_{i}_{size}_m{margin}.png"
                    crop.resize((size, size), Image.Resampling.BILINEAR).save(d / name)
    return d


def test_detector_none_one_row_per_crop(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.parquet"
    r = cage("annotate", crops, "-o", out, "--detector", "none")
    assert r.exit_code == 0, r.stderr
    rows = read(out).to_pylist()
    files = sorted(p.name for p in crops.iterdir())
    assert sorted(Path(r["source"]).name for r in rows) == files
    for row in rows:
        assert row["face_source"] == "whole_image" and row["det_score"] is None
        assert row["left_eye_x"] is None
        assert (row["x1"], row["y1"]) == (0, 0)
        assert (row["x2"], row["y2"]) == (row["frame_width"], row["frame_height"])
    happy = [r for r in rows if Path(r["source"]).name.startswith("single_face_0_")]
    assert len(happy) == 8
    assert all(r["label"] == "happy" for r in happy), [(r["source"], r["label"]) for r in happy]


def test_detector_auto_finds_a_face_in_every_crop(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto.parquet"
    r = cage("annotate", crops, "-o", out, "--detector", "auto", "--max-faces", "1")
    assert r.exit_code == 0, r.stderr
    rows = read(out).to_pylist()
    assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in crops.iterdir())
    sources = {r["face_source"] for r in rows}
    assert sources <= {"detected", "padded", "whole_image"} and "detected" in sources
    for row in rows:
        if row["face_source"] != "whole_image":
            assert 0 <= row["x1"] < row["x2"] <= row["frame_width"]
            assert row["det_score"] >= 0.9


def test_detector_auto_keeps_photos_without_faces_empty(tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    r = cage("annotate", NOFACE, SINGLE, "-o", out, "--detector", "auto", "--keep-empty")
    assert r.exit_code == 0, r.stderr
    rows = {Path(r["source"]).name: r for r in read(out).to_pylist()}
    # no_faces.jpg (148x199) is above the whole-image limit: still no face.
    assert rows["no_faces.jpg"]["face_index"] is None
    assert rows["single_face.jpg"]["face_source"] == "detected"


def test_padded_retry_maps_boxes_back() -> None:
    image = load_image(str(SINGLE))
    det = Detector(DetectOptions(max_side=None))
    (x1, y1, x2, y2), = det.detect([image])[0].boxes
    # A crop 20 % inside MTCNN's own box on every side: the face touches the border and
    # MTCNN alone misses it; on a padded copy it finds it.
    w, h = x2 - x1, y2 - y1
    tight = np.ascontiguousarray(
        image[int(y1 + 0.2 * h) : int(y2 - 0.2 * h), int(x1 + 0.2 * w) : int(x2 - 0.2 * w)]
    )
    assert len(det.detect([tight])[0]) == 0
    auto = Detector(DetectOptions(detector="auto", max_side=None, whole_max_side=0))
    faces = auto([tight])[0]
    assert faces.source == "padded" and len(faces) == 1
    bw, bh = faces.boxes[0, 2] - faces.boxes[0, 0], faces.boxes[0, 3] - faces.boxes[0, 1]
    assert (faces.boxes[:, :2] >= 0).all() and bw > 0.8 * tight.shape[1]
    assert faces.boxes[0, 2] <= tight.shape[1] and faces.boxes[0, 3] <= tight.shape[0]
    assert bh > 0.8 * tight.shape[0]


def test_help_states_the_whole_image_limit_in_use() -> None:
    """`--detector auto` help gives the limit the code uses (DetectOptions.whole_max_side)."""
    r = cage("annotate", "--help")
    text = " ".join(r.stdout.replace("│", " ").split())
    assert r.exit_code == 0
    assert f"small images (<= {DetectOptions().whole_max_side} px on their longer side)" in text


def test_cli_help_does_not_load_torch() -> None:
    """The help above reads DetectOptions; importing it must not pull in torch (seconds)."""
    import subprocess
    import sys

    code = "import sys, cage_cli.cli; print(sorted({'torch', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
