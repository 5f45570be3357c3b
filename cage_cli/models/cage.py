"""CAGE (Wagner et al., CVPR Workshops 2024, arXiv 2404.14975): MaxViT-T + expression/VA head.

The network is exactly the authors' module (github wagner-niklas/CAGE_expression_inference):
torchvision's ``maxvit_t`` with ``model.classifier`` replaced by

    AdaptiveAvgPool2d(1), Flatten, LayerNorm(512), Linear(512, 512), Tanh,
    Linear(512, N, bias=False)

with N = 10 (8 AffectNet expressions, then valence, arousal) or 9 (AffectNet-7, no contempt).
Their valence/arousal-only model adds ``Dropout(0.3)`` before the last layer (N = 2), so its
last layer is ``classifier.6``. State-dict keys are therefore the authors' own: a file written
by their ``torch.save(MODEL.state_dict(), "model.pt")`` loads with ``--weights model.pt``.

``cage train`` can also put the same head on any timm backbone (``--backbone NAME``). Those
checkpoints carry their own description (:class:`CageSpec`) and load as ``--model cage-custom``
(see :func:`load_model` and docs/training.md). No weights are shipped: see the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..schema import EXPRESSIONS
from .registry import (
    CropConfig,
    ExpressionModel,
    ModelConfig,
    ModelError,
    build_model,
    get_config,
    load_state_dict,
    read_state_dict,
    register_model,
    resolve_device,
    resolve_dtype,
    sha256_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_BACKBONE = "maxvit_t"
#: MTCNN boxes are tight (brows to chin); AffectNet's crops, which CAGE was trained on, show a
#: little more of the head. 10% of the box on each side, squared around its centre, is our
#: (untested against AffectNet) approximation; see docs/models/cage-maxvit-t.md.
CAGE_CROP = CropConfig(margin=0.1, square="expand", resample="bilinear")
AFFECTNET7: tuple[str, ...] = EXPRESSIONS[:7]  # AffectNet-7 = AffectNet-8 without contempt
CARD = "docs/models/cage-maxvit-t.md"
CUSTOM = "cage-custom"
CHECKPOINT_FORMAT = "cage-train-checkpoint"


@dataclass(frozen=True)
class CageSpec:
    """What a CAGE-style network looks like; stored in every `cage train` checkpoint."""

    backbone: str = TORCHVISION_BACKBONE  # "maxvit_t" = torchvision (the authors'); else timm
    classes: tuple[str, ...] = EXPRESSIONS  # class logits, in this order, come first
    va: bool = True  # then valence, arousal
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    dropout: float = 0.0  # before the last linear layer (the authors' VA-only model: 0.3)
    crop: CropConfig = field(default_factory=lambda: CAGE_CROP)

    @property
    def outputs(self) -> int:
        return len(self.classes) + (2 if self.va else 0)

    @property
    def torchvision(self) -> bool:
        return self.backbone == TORCHVISION_BACKBONE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CageSpec:
        try:
            crop = CropConfig(**d.get("crop", {})) if d.get("crop") else CAGE_CROP
            return cls(backbone=str(d["backbone"]), classes=tuple(d["classes"]), va=bool(d["va"]),
                       input_size=int(d["input_size"]), mean=tuple(d["mean"]),
                       std=tuple(d["std"]), dropout=float(d.get("dropout", 0.0)), crop=crop)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"checkpoint has a malformed model description: {e}") from None

    def describe(self) -> str:
        if not self.classes:
            what = "valence/arousal only"
        else:
            what = f"{len(self.classes)} classes" + (" + valence/arousal" if self.va else "")
        return f"{self.backbone}, {what}, {self.input_size}px"


def cage_head(width: int, outputs: int, dropout: float = 0.0, pool: bool = True) -> nn.Sequential:
    """The authors' head. ``pool=False`` for timm backbones, which pool themselves."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if pool else []
    layers += [nn.LayerNorm(width), nn.Linear(width, width), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, outputs, bias=False))
    return nn.Sequential(*layers)


class TimmCage(nn.Module):
    """A timm backbone (pooled features, no classifier) + the CAGE head."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_net(spec: CageSpec, pretrained_file: str | Path | None = None) -> nn.Module:
    """Build the network for ``spec``; optionally load ImageNet backbone weights from a file."""
    if spec.torchvision:
        from torchvision.models import maxvit_t

        if spec.input_size != 224:
            raise ModelError("torchvision maxvit_t takes 224x224 input only")
        net = maxvit_t(weights=None)
        if pretrained_file is not None:
            _load_backbone_file(net, Path(pretrained_file))
        width = net.classifier[3].in_features
        net.classifier = cage_head(width, spec.outputs, spec.dropout)
        return net
    import timm

    if not timm.is_model(spec.backbone):
        raise ModelError(f"unknown backbone {spec.backbone!r}: use maxvit_t (torchvision) "
                         "or a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise ModelError(f"pretrained file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    try:
        backbone = timm.create_model(spec.backbone, **kwargs)
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelError(f"cannot build backbone {spec.backbone}: {_one_line(e)}") from None
    head = cage_head(backbone.num_features, spec.outputs, spec.dropout, pool=False)
    return TimmCage(backbone, head)


def _load_backbone_file(net: nn.Module, path: Path) -> None:
    """torchvision ImageNet weights (e.g. maxvit_t-bc5ab103.pth) into everything but the head."""
    state = {k: v for k, v in read_state_dict(path, "pretrained file").items()
             if not k.startswith("classifier.")}
    own = {k for k in net.state_dict() if not k.startswith("classifier.")}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ModelError(f"{path} is not a torchvision maxvit_t state dict: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ModelError(f"{path} does not fit maxvit_t: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# --------------------------------------------------------------------------- registered models

SPECS: dict[str, CageSpec] = {
    "cage-maxvit-t": CageSpec(),
    "cage-maxvit-t-7": CageSpec(classes=AFFECTNET7),
    "cage-maxvit-t-va": CageSpec(classes=(), dropout=0.3),
}

_DESCRIPTIONS = {
    "cage-maxvit-t": "CAGE MaxViT-T, AffectNet-8 expressions + valence/arousal (bring --weights)",
    "cage-maxvit-t-7": "CAGE MaxViT-T, AffectNet-7 expressions + valence/arousal (bring --weights)",
    "cage-maxvit-t-va": "CAGE MaxViT-T, valence/arousal only (bring --weights)",
    CUSTOM: "CAGE head on any backbone, from a `cage train` checkpoint (--weights CKPT)",
}


def model_config(name: str, spec: CageSpec) -> ModelConfig:
    """The ModelConfig for a spec. VA is not clipped: the authors' code does not clip it."""
    return ModelConfig(
        name=name,
        builder=partial(build_net, spec),  # picklable, for DataLoader workers under spawn
        description=_DESCRIPTIONS.get(name, f"CAGE head on {spec.describe()}"),
        input_size=spec.input_size,
        channels=3,
        mean=spec.mean,
        std=spec.std,
        classes=spec.classes,
        va_method="head" if spec.va else "centroid",
        crop=spec.crop,
        weights=None,
        output="logits",
        clip_va=False,
        loader=load_model,
        licence="MIT (code); weights: yours",
        training_data="none shipped; AffectNet in the paper (see docs/training.md)",
        card=CARD,
    )


def _custom_builder() -> nn.Module:
    raise ModelError(f"{CUSTOM} is built from a `cage train` checkpoint: pass --weights CKPT "
                     "(see docs/training.md)")




# --------------------------------------------------------------------------- checkpoints

def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A `cage train` checkpoint as a dict, or None for a plain state dict (the authors')."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in torch's legacy (pre-zip) format cannot be mmapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read weights {path}: {_one_line(e)}") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    return None


def spec_name(spec: CageSpec) -> str:
    """The registered model a spec matches, else cage-custom."""
    for name, s in SPECS.items():
        if s == spec:
            return name
    return CUSTOM


def create_from_checkpoint(path: str | Path, device: str = "auto",
                           precision: str = "auto") -> ExpressionModel:
    """An ExpressionModel from a `cage train` checkpoint, whatever its backbone."""
    ckpt = read_checkpoint(path)
    if ckpt is None:
        raise ModelError(f"{path} is a plain state dict, not a `cage train` checkpoint; "
                         "use --model cage-maxvit-t (or -7, -va) for the authors' files")
    spec = CageSpec.from_dict(ckpt["model"])
    name = spec_name(spec)
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    net = build_net(spec)
    load_state_dict(net, Path(path), name)
    return ExpressionModel(net, model_config(name, spec), sha256_file(Path(path)), dev, dtype)


def load_model(name: str | None, weights: str | Path | None = None, device: str = "auto",
               precision: str = "auto") -> ExpressionModel:
    """``create_model`` that also understands `cage train` checkpoints.

    ``name`` None or "cage-custom": the model is described by the checkpoint itself.
    A CAGE name with a checkpoint made for another variant gives a clear error naming the
    right ``--model``.
    """
    if name is None or name == CUSTOM:
        if weights is None:
            raise ModelError(f"{CUSTOM} needs --weights, a checkpoint written by `cage train`"
                             if name else "pass --model NAME (see `cage models`)")
        return create_from_checkpoint(weights, device, precision)
    if weights is not None and name in SPECS:
        ckpt = read_checkpoint(weights)
        if ckpt is not None:
            spec = CageSpec.from_dict(ckpt["model"])
            if spec != SPECS[name]:
                right = spec_name(spec)
                raise ModelError(f"{weights} was trained as {spec.describe()}, not {name}; "
                                 f"use --model {right}")
    return build_model(get_config(name), weights=weights, device=device, precision=precision)


for _name, _spec in SPECS.items():
    register_model(model_config(_name, _spec))
register_model(replace(model_config(CUSTOM, CageSpec()), builder=_custom_builder))
