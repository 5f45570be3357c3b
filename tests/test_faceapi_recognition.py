"""faceapi-recognition: the PyTorch port of face-api.js's FaceRecognitionNet, and the aligned
crops cage feeds it (cage_cli.annotation.identity.embed).

The reference descriptors come from face-api itself (Node, tfjs cpu backend), see
scripts/faceapi/make_recognition_fixture.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEDIA, cage
from PIL import Image

from cage_cli.models import (
    ModelError,
    create_embedding_model,
    create_model,
    get_config,
    list_models,
    registry,
)

FIXTURE = Path(__file__).parent / "fixtures" / "faceapi_recognition_reference.npz"
NAME = "faceapi-recognition"


@pytest.fixture(scope="module")
def model():
    return create_embedding_model(NAME, device="cpu")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_fixture_is_real_faces_of_face_api(reference):
    n = len(reference["inputs"])
    assert n >= 20 and reference["inputs"].shape == (n, 150, 150, 3)
    assert reference["inputs"].dtype == np.uint8
    assert reference["descriptors"].shape == (n, 128)
    assert "face-api 1.7.15" in str(reference["versions"])
    assert len(set(reference["sources"])) >= 8


def test_matches_node_reference(model, reference):
    out = model.embed(torch.from_numpy(reference["inputs"]))
    assert out.dtype == np.float32 and out.shape == reference["descriptors"].shape
    diff = np.abs(out.astype(np.float64) - reference["descriptors"])
    assert diff.max() <= 1e-4, f"max |d - d_face-api| = {diff.max():.2e}"


def test_alignment_reproduces_the_fixture_crops(reference):
    """face_crops on the stored landmarks gives the crops face-api was run on."""
    import decord

    from cage_cli.annotation.identity.embed import face_crops

    crops = []
    for source in dict.fromkeys(reference["sources"]):
        idx = np.flatnonzero(reference["sources"] == source)
        if "#" in source:
            name, i = str(source).split("#")
            frame = decord.VideoReader(str(MEDIA / name))[int(i)].asnumpy()
        else:
            frame = np.asarray(Image.open(MEDIA / str(source)).convert("RGB"))
        crops.append(face_crops(frame, reference["landmarks"][idx]))
    crops = np.concatenate(crops)
    assert np.abs(crops.astype(int) - reference["inputs"]).max() <= 1


def test_same_person_is_closer_than_different_people(reference):
    """short_clip.mp4's one face in frames 0 and 60 against the 6 people of multiface.jpg."""
    from cage_cli.annotation.identity.embed import distances

    src, d = reference["sources"], reference["descriptors"]
    clip = d[src == "short_clip.mp4#0"], d[src == "short_clip.mp4#60"]
    same = distances(clip[0], clip[1])
    multi = distances(d[src == "multiface.jpg"])
    assert same.max() < 0.45
    assert multi[np.triu_indices(6, 1)].min() > 0.6


def test_registered_as_embedding_model():
    c = get_config(NAME)
    assert c.kind == "embedding" and c.embedding_size == 128 and c.bundled
    assert (c.input_size, c.channels) == (150, 3)
    np.testing.assert_allclose(np.array(c.mean) * 255, [122.782, 117.001, 104.298])
    assert NAME in list_models("embedding") and NAME in list_models(None)
    assert NAME not in list_models()  # expression models only, as every caller expects
    assert (Path(__file__).parents[1] / c.card).exists()


def test_kinds_do_not_mix():
    with pytest.raises(ModelError, match="face-embedding model, not an expression model"):
        create_model(NAME, device="cpu")
    with pytest.raises(ModelError, match="not a face-embedding model"):
        create_embedding_model("faceapi-expression", device="cpu")


def test_bad_or_missing_weights_give_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    expression = registry.WEIGHTS_DIR / "faceapi_expression.pt"
    cases = [(tmp_path / "missing.pt", "weights file not found"),
             (bad, "cannot read weights file"),
             (expression, "does not fit model faceapi-recognition")]
    for path, reason in cases:
        with pytest.raises(ModelError) as e:
            create_embedding_model(NAME, weights=path, device="cpu")
        msg = str(e.value)
        assert reason in msg and str(path) in msg and "\n" not in msg
    # the bundled file gone (a broken install)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelError, match=r"weights file not found: .*faceapi_recognition\.pt"):
        create_embedding_model(NAME, device="cpu")


def test_cli_lists_and_shows_it():
    r = cage("models")
    assert r.exit_code == 0
    expression, embedding = r.stdout.split("face-embedding models")
    assert NAME not in expression and NAME in embedding and "128-D" in embedding
    r = cage("models", NAME)
    assert r.exit_code == 0
    assert "kind: embedding" in r.stdout and "Model card: faceapi-recognition" in r.stdout
    r = cage("annotate", MEDIA / "single_face.jpg", "-o", "-", "--model", NAME)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "face-embedding model, not an expression model" in r.stderr


def test_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = create_embedding_model(NAME, device="cpu")
    assert m.embed(np.zeros((1, 150, 150, 3), np.uint8)).shape == (1, 128)
    with pytest.raises(ValueError, match=r"takes \(N, 150, 150, 3\) crops"):
        m.embed(np.zeros((1, 112, 112, 3), np.uint8))
