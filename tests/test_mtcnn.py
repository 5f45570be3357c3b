"""cage_cli.annotation.detection.mtcnn gives facenet-pytorch's MTCNN detections on real media,
faster."""

from __future__ import annotations

import subprocess
import sys

import decord
import numpy as np
import pytest
import torch
from conftest import CLIP, INTERVIEW, MEDIA, MULTI, NOFACE, SINGLE
from facenet_pytorch import MTCNN as Reference
from PIL import Image

from cage_cli.annotation.detection.mtcnn import MTCNN
from cage_cli.annotation.detection.mtcnn_nets import batched_nms, load_nets, max_pool_rows, nms


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


def _random_boxes(rng: np.random.Generator, n: int, integer: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n boxes (float32) crowded into a small area, so many overlap; integer corners and
    scores from a few values give ties in both IoU and score."""
    xy = rng.uniform(0, 40, (n, 2))
    wh = rng.uniform(1, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    if integer:
        boxes = np.floor(boxes)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.choice(np.linspace(0.6, 1, 9), n) if integer else rng.uniform(0, 1, n)
    idxs = rng.integers(0, 4, n)
    return (torch.as_tensor(boxes, dtype=torch.float32),
            torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(idxs))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 60, 400, 999, 1000, 1001, 1600])
def test_nms_same_as_torchvision(n: int) -> None:
    """Same keep indices, same order, as torchvision's nms and batched_nms, on both of
    batched_nms's code paths (coordinate trick up to 1000 boxes, per class above)."""
    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(n)
    suppressed = 0
    for trial in range(30 if n < 1000 else 4):
        boxes, scores, idxs = _random_boxes(rng, n, integer=trial % 2 == 0)
        for threshold in (0.5, 0.7, 0.3):
            expected = tv_nms(boxes, scores, threshold)
            assert torch.equal(nms(boxes, scores, threshold), expected)
            expected = tv_batched_nms(boxes, scores, idxs, threshold)
            assert torch.equal(batched_nms(boxes, scores, idxs, threshold), expected)
            suppressed += n - len(expected)
    assert suppressed > 0 or n < 7  # not a vacuous comparison: boxes overlap


def test_annotate_does_not_import_torchvision(tmp_path) -> None:
    """facenet-pytorch's package imports torchvision (~170 MiB, 1-3 s); cage must not."""
    code = (
        "import sys\n"
        "from cage_cli.cli import app\n"  # the whole annotate path: runner, Pipeline, rows
        f"app(['annotate', {str(SINGLE)!r}, '-o', {str(tmp_path / 'out.parquet')!r}],\n"
        "    standalone_mode=False)\n"
        "mods = [m for m in ('torchvision', 'facenet_pytorch') if m in sys.modules]\n"
        "print('imported:', mods)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout, out.stdout
    import pyarrow.parquet as pq
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 1  # it did annotate a face


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2)])
@pytest.mark.parametrize("size", [(2, 3), (9, 9), (22, 23), (539, 959)])
def test_max_pool_rows_is_torch_max_pool_bit_for_bit(kernel: int, stride: int,
                                                      size: tuple[int, int]) -> None:
    """The networks' ceil-mode pools on channels-last activations, on odd and even sizes
    (the last window cut by the edge) and inputs smaller than the window."""
    pool = torch.nn.MaxPool2d(kernel, stride, ceil_mode=True)
    x = torch.randn(2, 10, *size).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("-inf")
    got, want = max_pool_rows(x, pool), pool(x)
    assert got.shape == want.shape and torch.equal(got, want)


def test_networks_give_the_same_outputs_as_with_torch_pools(monkeypatch) -> None:
    """P-Net on a real photo, R-Net and O-Net on crops of it: bit for bit the outputs the
    networks give with torch's own max pool."""
    import cage_cli.annotation.detection.mtcnn_nets as nets

    frame = np.asarray(Image.open(MULTI).convert("RGB"))
    x = torch.as_tensor((frame[None].astype(np.float32) - 127.5) * 0.0078125).permute(0, 3, 1, 2)
    inputs = (x, x[:, :, :240:10, :240:10].repeat(5, 1, 1, 1),
              x[:, :, :480:10, :480:10].repeat(3, 1, 1, 1))
    for net, inp in zip(load_nets(torch.device("cpu")), inputs, strict=True):
        net = net.to(memory_format=torch.channels_last)
        inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            got = net(inp)
            with monkeypatch.context() as m:
                m.setattr(nets, "max_pool_rows", lambda t, pool: pool(t))
                want = net(inp)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
