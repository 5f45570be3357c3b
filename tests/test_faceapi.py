"""faceapi-expression: the PyTorch port of face-api.js's FaceExpressionNet.

The reference numbers come from face-api itself (Node, tfjs cpu backend), see
scripts/faceapi/make_fixture.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cage_cli.models import create_model, get_config
from cage_cli.models.faceapi import CANONICAL_CLASSES, NATIVE_LABELS, tf_same_padding
from cage_cli.preprocess import crop_faces
from cage_cli.schema import EXPRESSIONS

FIXTURE = Path(__file__).parent / "fixtures" / "faceapi_expression_reference.npz"
MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"  # as in conftest.py
NAME = "faceapi-expression"
#: Canonical column of each of face-api's outputs.
NATIVE_TO_CANON = [EXPRESSIONS.index(c) for c in CANONICAL_CLASSES]

needs_media = pytest.mark.skipif(not (MEDIA / "single_face.jpg").exists(),
                                 reason=f"test media not found in {MEDIA}")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_fixture_is_face_api_order_and_size(reference):
    assert tuple(reference["labels"]) == NATIVE_LABELS
    n = len(reference["inputs"])
    assert n >= 20
    assert reference["inputs"].shape == (n, 112, 112, 3)
    assert reference["inputs"].dtype == np.uint8
    assert reference["probabilities"].shape == (n, 7)


def test_matches_node_reference(model, reference):
    out = model.predict(torch.from_numpy(reference["inputs"]))
    native = out["probs"][:, NATIVE_TO_CANON]
    diff = np.abs(native.astype(np.float64) - reference["probabilities"])
    assert diff.max() < 1e-4, f"max |p - p_face-api| = {diff.max():.2e}"
    # The logits too (face-api's fc output), a stricter check than softmax outputs.
    with torch.inference_mode():
        logits = model.net(model.normalize(torch.from_numpy(reference["inputs"]))).numpy()
    assert np.abs(logits - reference["logits"]).max() < 1e-3


def test_contempt_is_nan_and_probs_sum_to_one(model, reference):
    probs = model.predict(torch.from_numpy(reference["inputs"][:4]))["probs"]
    assert np.isnan(probs[:, EXPRESSIONS.index("contempt")]).all()
    present = np.delete(probs, EXPRESSIONS.index("contempt"), axis=1)
    np.testing.assert_allclose(present.sum(axis=1), 1.0, atol=1e-5)


def test_tf_same_padding_is_asymmetric_for_stride_2():
    assert tf_same_padding(112, 3, 2) == (0, 1)
    assert tf_same_padding(7, 3, 2) == (1, 1)
    assert tf_same_padding(56, 3, 1) == (1, 1)


def test_config():
    cfg = get_config(NAME)
    assert cfg.input_size == 112 and cfg.channels == 3
    assert cfg.crop.square == "pad" and cfg.crop.pad_value == 0 and cfg.crop.margin == 0
    assert cfg.crop.resample == "tf_bilinear"
    assert cfg.va_method == "centroid" and cfg.output == "logits"
    assert "contempt" not in cfg.classes and len(cfg.classes) == 7
    np.testing.assert_allclose(np.array(cfg.mean) * 255, [122.782, 117.001, 104.298])


def test_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = create_model(NAME, device="cpu")
    out = m.predict(torch.zeros((1, 112, 112, 3), dtype=torch.uint8))
    assert out["probs"].shape == (1, 8)


def _frame(source: str) -> np.ndarray:
    if "#" in source:
        import decord

        name, index = source.split("#")
        return decord.VideoReader(str(MEDIA / name))[int(index)].asnumpy()
    return np.asarray(Image.open(MEDIA / source).convert("RGB"))


@needs_media
def test_crops_reproduce_face_api_preprocessing(model, reference):
    """crop_faces on the stored boxes gives the fixture's crops, and the port's output on them
    is close to face-api's own pad + resize of the unresized box (ours rounds to uint8)."""
    config = get_config(NAME)
    crops = []
    for source in dict.fromkeys(reference["sources"]):
        idx = np.flatnonzero(reference["sources"] == source)
        frame = Image.fromarray(_frame(str(source)))
        crops.append(crop_faces(frame, reference["boxes"][idx], config).numpy())
    crops = np.concatenate(crops)
    assert np.abs(crops.astype(int) - reference["inputs"]).max() <= 1
    native = model.predict(torch.from_numpy(crops))["probs"][:, NATIVE_TO_CANON]
    e2e = reference["e2e_probabilities"]
    assert np.abs(native - e2e).mean() < 0.01
    assert (native.argmax(1) == e2e.argmax(1)).mean() >= 0.9


@needs_media
def test_single_face_is_happy(model):
    from facenet_pytorch import MTCNN

    image = Image.open(MEDIA / "single_face.jpg").convert("RGB")
    boxes, _ = MTCNN(keep_all=True, device="cpu").detect(np.asarray(image))
    assert boxes is not None and len(boxes) == 1
    boxes = np.asarray(boxes.tolist(), np.float32)
    out = model.predict(crop_faces(image, boxes, get_config(NAME)))
    probs = out["probs"][0]
    assert EXPRESSIONS[int(np.nanargmax(probs))] == "happy"
    assert np.isnan(probs[EXPRESSIONS.index("contempt")])
    assert np.isfinite(out["valence"]).all() and out["valence"][0] > 0
