"""cage_cli.mtcnn gives facenet-pytorch's MTCNN detections on real media, faster."""

from __future__ import annotations

import decord
import numpy as np
import pytest
import torch
from conftest import CLIP, INTERVIEW, MEDIA, MULTI, NOFACE, SINGLE
from facenet_pytorch import MTCNN as Reference
from PIL import Image

from cage_cli.mtcnn import MTCNN


def _frames() -> list[tuple[str, np.ndarray]]:
    out = [(p.name, np.asarray(Image.open(p).convert("RGB")))
           for p in (SINGLE, MULTI, NOFACE, MEDIA / "portrait_kate_siegel.jpg")]
    for video, step, side in ((CLIP, 23, None), (INTERVIEW, 35, 960)):
        reader = decord.VideoReader(str(video))
        for i in range(0, len(reader), step):
            frame = reader[i].asnumpy()
            if side:  # as cage detects by default: longer side 960
                h, w = frame.shape[:2]
                size = (side, round(h * side / w))
                frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
            out.append((f"{video.name}:{i}", frame))
    return out


@pytest.fixture(scope="module")
def frames() -> list[tuple[str, np.ndarray]]:
    return _frames()


@pytest.mark.parametrize("min_face", [20, 40])
def test_same_detections_as_facenet_pytorch(frames, min_face: int) -> None:
    ours = MTCNN()
    ref = Reference(keep_all=True, post_process=False, select_largest=False,
                    min_face_size=min_face)
    total = 0
    for name, frame in frames:
        (boxes, points), = ours(frame[None], min_face)
        with torch.inference_mode():
            rb, rp, rl = ref.detect(frame.copy(), landmarks=True)
        if rb is None:
            assert len(boxes) == 0, name
            continue
        rb, rp, rl = (np.asarray(a, np.float32) for a in (rb, rp, rl))
        assert len(boxes) == len(rb), name
        np.testing.assert_allclose(boxes[:, :4], rb, atol=0.01, err_msg=name)
        np.testing.assert_allclose(boxes[:, 4], rp, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(points, rl, atol=0.01, err_msg=name)
        total += len(boxes)
    # Not a vacuous comparison: 8 faces in the photos, one per clip frame, and 2-7 per
    # interview frame at 960 px (fewer with min_face 40).
    assert total >= (20 if min_face == 20 else 12)


def test_batch_of_frames_matches_single_calls(frames) -> None:
    ours = MTCNN()
    clip = np.stack([f for name, f in frames if name.startswith(CLIP.name)])
    batched = ours(clip)
    assert len(batched) == len(clip)
    for (boxes, points), frame in zip(batched, clip, strict=True):
        (single, single_points), = ours(frame[None])
        assert len(boxes) == len(single) == 1
        np.testing.assert_allclose(boxes, single, atol=0.01)
        np.testing.assert_allclose(points, single_points, atol=0.01)


def test_frames_smaller_than_min_face_have_no_faces() -> None:
    (boxes, points), = MTCNN()(np.zeros((1, 15, 30, 3), np.uint8), 20)
    assert boxes.shape == (0, 5) and points.shape == (0, 5, 2)
