"""Every registered model annotates the shared photos, with random weights where none ship."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cage, read

from cage_cli.models import get_config, list_models
from cage_cli.models.cage import CHECKPOINT_FORMAT, CUSTOM, SPECS, CageSpec, build_net
from cage_cli.schema import EXPRESSIONS


def random_weights(name: str, folder: Path) -> Path | None:
    """A weights file with random values for a model that ships none (None if it ships some).
    cage-custom gets a `cage train` checkpoint with a small timm backbone (as test_train.py)."""
    if get_config(name).bundled:
        return None
    torch.manual_seed(0)
    path = folder / f"{name}.pt"
    if name == CUSTOM:
        spec = CageSpec(backbone="test_efficientnet", input_size=64)
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": spec.to_dict(),
                    "state_dict": build_net(spec).state_dict()}, path)
    else:
        torch.save(build_net(SPECS[name]).state_dict(), path)  # as the authors save theirs
    return path


@pytest.mark.parametrize("name", list_models())
def test_every_model_annotates_the_photos(name: str, photos: Path, tmp_path: Path) -> None:
    weights = random_weights(name, tmp_path)
    out = tmp_path / "faces.parquet"
    args = ["--weights", weights] if weights else []
    r = cage("annotate", photos, "-o", out, "--model", name, *args, "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert not (tmp_path / "faces.parquet.cage-partial").exists()
    rows = read(out).to_pylist()
    assert len(rows) == 7  # 1 face in single_face.jpg, 6 in multiface.jpg
    config = get_config(name) if name != CUSTOM else None
    classes = config.classes if config else EXPRESSIONS  # the checkpoint above: all 8
    for row in rows:
        probs = np.array([row[f"p_{e}"] for e in EXPRESSIONS], dtype=float)
        assert [e for e, p in zip(EXPRESSIONS, probs, strict=True) if p == p] == \
            [e for e in EXPRESSIONS if e in classes]
        if classes:
            assert row["label"] == EXPRESSIONS[int(np.nanargmax(probs))]
            assert abs(np.nansum(probs) - 1) < 1e-4
        else:  # valence/arousal only: no class, no label; valence and arousal from the head
            assert row["label"] is None and row["va_method"] == "head"
        assert row["valence"] is not None and row["arousal"] is not None
        assert row["model"] == name


def test_va_only_model_values_come_from_its_head(photos: Path, tmp_path: Path) -> None:
    """cage-maxvit-t-va: valence/arousal are the network's two outputs for the face's crop."""
    from PIL import Image

    from cage_cli.models import create_model
    from cage_cli.preprocess import crop_faces

    weights = random_weights("cage-maxvit-t-va", tmp_path)
    out = tmp_path / "va.jsonl"
    r = cage("annotate", photos / "single_face.jpg", "-o", out, "--model", "cage-maxvit-t-va",
             "--weights", weights, "-q")
    assert r.exit_code == 0, r.stderr
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["label"] is None and row["p_neutral"] is None and row["va_method"] == "head"
    model = create_model("cage-maxvit-t-va", weights=weights, device="cpu", precision="fp32")
    box = np.array([[row["x1"], row["y1"], row["x2"], row["y2"]]], np.float32)
    crop = crop_faces(Image.open(photos / "single_face.jpg").convert("RGB"), box, model.config)
    with torch.inference_mode():
        head = model.net(model.normalize(crop)).float().numpy()[0]
    assert head.shape == (2,)
    np.testing.assert_allclose([row["valence"], row["arousal"]], head, atol=1e-4)
