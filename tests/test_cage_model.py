"""The CAGE models load the authors' own state-dict files (no weights are downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cage_cli.models import ModelError, create_model, get_config, list_models
from cage_cli.models.cage import (
    AFFECTNET7,
    CAGE_CROP,
    CHECKPOINT_FORMAT,
    CUSTOM,
    CageSpec,
    build_net,
    create_from_checkpoint,
    load_model,
)
from cage_cli.models.registry import CPU_CHUNK
from cage_cli.schema import EXPRESSIONS


def authors_model(outputs: int, va_only: bool = False) -> nn.Module:
    """The authors' module, as in their train.py / inference_on_webcam.py (weights=None here)."""
    model = torchvision.models.maxvit_t(weights=None)
    block_channels = model.classifier[3].in_features
    layers = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(block_channels),
        nn.Linear(block_channels, block_channels),
        nn.Tanh(),
    ]
    if va_only:  # their AffectNet*_Maxvit_VA/train.py
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(block_channels, outputs, bias=False))
    model.classifier = nn.Sequential(*layers)
    with torch.no_grad():  # every tensor random, so a mis-assigned one would show
        g = torch.Generator().manual_seed(outputs)
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 224, 224, 3), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(("name", "outputs", "va_only"), [
    ("cage-maxvit-t", 10, False),
    ("cage-maxvit-t-7", 9, False),
    ("cage-maxvit-t-va", 2, True),
])
def test_authors_state_dict_loads_with_identical_outputs(tmp_path: Path, faces: torch.Tensor,
                                                         name: str, outputs: int,
                                                         va_only: bool) -> None:
    theirs = authors_model(outputs, va_only)
    path = tmp_path / "model.pt"
    torch.save(theirs.state_dict(), path)  # as their training scripts save best models

    ours = create_model(name, weights=path, device="cpu", precision="fp32")
    assert list(ours.net.state_dict()) == list(theirs.state_dict())
    x = ours.normalize(faces)
    with torch.no_grad():
        expected = theirs(x)
        got = ours.net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # predict runs the network on a chunk of CPU_CHUNK faces (the one face padded with
    # copies): the authors' network on that chunk, to the same float32 rounding
    with torch.no_grad():
        expected = theirs(ours.normalize(faces.expand(CPU_CHUNK, *faces.shape[1:])))[:1]
    pred = ours.predict(faces)
    k = outputs - 2
    canon = [EXPRESSIONS.index(c) for c in ours.config.classes]
    if k:
        np.testing.assert_allclose(pred["probs"][:, canon], expected[:, :k].softmax(1).numpy(),
                                   rtol=1e-6, atol=1e-7)
        absent = [i for i in range(len(EXPRESSIONS)) if i not in canon]
        assert np.isnan(pred["probs"][:, absent]).all()
    else:
        assert np.isnan(pred["probs"]).all()
    # the authors do not clip valence/arousal, and neither do we
    np.testing.assert_allclose(pred["valence"], expected[:, k].numpy(), rtol=1e-6)
    np.testing.assert_allclose(pred["arousal"], expected[:, k + 1].numpy(), rtol=1e-6)


def test_registered_configs() -> None:
    names = set(list_models())
    assert {"cage-maxvit-t", "cage-maxvit-t-7", "cage-maxvit-t-va", CUSTOM} <= names
    c = get_config("cage-maxvit-t")
    assert c.classes == EXPRESSIONS and c.va_method == "head" and not c.clip_va
    assert (c.input_size, c.channels, c.mean, c.std) == (224, 3, (0.485, 0.456, 0.406),
                                                         (0.229, 0.224, 0.225))
    assert c.crop == CAGE_CROP and c.crop.square == "expand"
    assert c.weights is None and Path(c.card).name == "cage-maxvit-t.md"
    assert get_config("cage-maxvit-t-7").classes == AFFECTNET7 == EXPRESSIONS[:7]
    assert get_config("cage-maxvit-t-va").classes == ()


def test_wrong_file_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "va.pt"
    torch.save(authors_model(2, va_only=True).state_dict(), path)
    with pytest.raises(ModelError) as e:
        create_model("cage-maxvit-t", weights=path, device="cpu")
    msg = str(e.value)
    assert "missing keys classifier.5.weight" in msg
    assert "unexpected keys classifier.6.weight" in msg

    other = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ModelError, match="missing keys stem.*unexpected keys conv1"):
        create_model("cage-maxvit-t", weights=other, device="cpu")

    seven = tmp_path / "seven.pt"
    torch.save(authors_model(9).state_dict(), seven)
    with pytest.raises(ModelError, match=r"classifier.5.weight has shape \(9, 512\)"):
        create_model("cage-maxvit-t", weights=seven, device="cpu")

    with pytest.raises(ModelError, match="ships no weights; pass --weights"):
        create_model("cage-maxvit-t", device="cpu")
    with pytest.raises(ModelError, match="not found"):
        create_model("cage-maxvit-t", weights=tmp_path / "nope.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("cage-maxvit-t", weights=junk, device="cpu")


def test_train_checkpoints_describe_themselves(tmp_path: Path) -> None:
    """A `cage train` checkpoint: the registered name works for maxvit_t specs; other
    backbones load as cage-custom; a variant mismatch names the right --model."""
    spec = CageSpec(classes=AFFECTNET7)
    net = build_net(spec)
    path = tmp_path / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": spec.to_dict(),
                "state_dict": net.state_dict()}, path)
    m = create_model("cage-maxvit-t-7", weights=path, device="cpu")
    assert m.config.classes == AFFECTNET7
    assert load_model(None, path, device="cpu").name == "cage-maxvit-t-7"
    with pytest.raises(ModelError, match="use --model cage-maxvit-t-7"):
        load_model("cage-maxvit-t", path, device="cpu")

    tiny = CageSpec(backbone="test_efficientnet", classes=EXPRESSIONS, va=False,
                    input_size=64)
    tpath = tmp_path / "tiny.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": tiny.to_dict(),
                "state_dict": build_net(tiny).state_dict()}, tpath)
    em = create_from_checkpoint(tpath, device="cpu")
    assert em.name == CUSTOM and em.config.input_size == 64
    assert em.config.va_method == "centroid"  # no VA head: class-centroid valence/arousal
    out = em.predict(torch.zeros((3, 64, 64, 3), dtype=torch.uint8))
    assert out["probs"].shape == (3, 8)
    np.testing.assert_allclose(out["probs"].sum(1), 1, rtol=1e-5)
    assert load_model(CUSTOM, tpath, device="cpu").config.input_size == 64
    # The registry's create_model (what `cage annotate --model cage-custom` calls) reads the
    # checkpoint's own description too.
    assert create_model(CUSTOM, weights=tpath, device="cpu").config.input_size == 64
    with pytest.raises(ModelError, match="needs --weights"):
        load_model(CUSTOM, None)
    with pytest.raises(ModelError, match="plain state dict"):
        plain = tmp_path / "plain.pt"
        torch.save(build_net(tiny).state_dict(), plain)
        create_from_checkpoint(plain, device="cpu")
    with pytest.raises(ModelError, match="unknown backbone"):
        build_net(CageSpec(backbone="no_such_net_xyz"))


def test_pretrained_file_loads_backbone_only(tmp_path: Path) -> None:
    """--pretrained-file: torchvision ImageNet weights (1000-class head) fill the backbone."""
    imagenet = torchvision.models.maxvit_t(weights=None)
    path = tmp_path / "maxvit_t-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    net = build_net(CageSpec(), pretrained_file=path)
    torch.testing.assert_close(net.state_dict()["stem.0.0.weight"],
                               imagenet.state_dict()["stem.0.0.weight"])
    assert net.classifier[-1].out_features == 10
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelError, match="not a torchvision maxvit_t state dict"):
        build_net(CageSpec(), pretrained_file=bad)
