"""Model registry: one config per model, next to the code that builds it (the timm way).

A model module defines its network and registers a :class:`ModelConfig`::

    register_model(ModelConfig(name="fer-mini-xception", builder=MiniXception, ...))

``create_model(name)`` then builds the network, loads the bundled weights (or ``weights=PATH``)
and returns an :class:`ExpressionModel` that turns face crops into canonical outputs.
Face-embedding models (``kind="embedding"``) live in the same registry;
``create_embedding_model(name)`` returns an :class:`EmbeddingModel` (crops in, descriptors out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..schema import EXPRESSIONS
from .va import centroid_va

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ModelError(Exception):
    """A model cannot be built or its weights cannot be loaded (message is user-facing)."""


@dataclass(frozen=True)
class CropConfig:
    """How a face box becomes the network's input image.

    margin: fraction of the box's width/height added on each side.
    margin_px: pixels added on each side (after ``margin``).
    square: "none" keeps the box's aspect ratio (the crop is stretched to the input size);
        "expand" grows the shorter side of the box around its centre before cropping;
        "pad" crops the box, then pads the crop to a square with ``pad_value`` (centred).
    Regions outside the frame are filled with ``pad_value``: a grey level, or "bottom_mean" for
    the mean of the frame's bottom two rows (as the fer package pads).
    resample: a PIL filter name (these anti-alias when shrinking), or "cv2_linear" for OpenCV's
    cv2.resize INTER_LINEAR (no anti-aliasing, see preprocess.cv2_resize_linear), or
    "tf_bilinear" for TensorFlow's legacy resize_bilinear (see preprocess.tf_resize_bilinear).
    """

    margin: float = 0.0
    margin_px: float = 0.0
    square: str = "none"
    pad_value: int | str = 0
    resample: str = "bilinear"  # nearest | bilinear | bicubic | area | cv2_linear | tf_bilinear


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a model and feed it (input size, normalisation, classes)."""

    name: str
    builder: Callable[[], nn.Module]
    description: str
    input_size: int
    channels: int  # 1 = grayscale, 3 = RGB
    mean: tuple[float, ...]  # on pixels scaled to [0, 1]
    std: tuple[float, ...]
    #: Native output order of the class logits, as canonical names from schema.EXPRESSIONS.
    classes: tuple[str, ...]
    #: "head": valence, arousal are the two outputs after the class logits (as CAGE);
    #: "centroid": expected AffectNet class centroid under the class probabilities.
    va_method: str
    crop: CropConfig = field(default_factory=CropConfig)
    #: File name under cage_cli/models/weights/, or None when the user must pass --weights.
    weights: str | None = None
    #: "logits" (softmax applied here) or "probs" (the network ends in a softmax).
    output: str = "logits"
    #: Clip head valence/arousal to [-1, 1].
    clip_va: bool = True
    #: Models whose network depends on the weights file (e.g. `cage train` checkpoints)
    #: build themselves: loader(name, weights, device, precision) -> ExpressionModel.
    loader: Callable[..., ExpressionModel] | None = None
    licence: str = ""
    training_data: str = ""
    card: str = ""  # path of the model card, relative to the repository root
    #: "expression" (ExpressionModel: classes, valence/arousal) or "embedding"
    #: (EmbeddingModel: one descriptor of ``embedding_size`` floats per face)
    kind: str = "expression"
    embedding_size: int = 0

    @property
    def bundled(self) -> bool:
        return self.weights is not None


_REGISTRY: dict[str, ModelConfig] = {}


KINDS = ("expression", "embedding")


def register_model(config: ModelConfig) -> ModelConfig:
    if config.kind not in KINDS:
        raise ValueError(f"{config.name}: unknown kind {config.kind!r}")
    if config.name in _REGISTRY:
        raise ValueError(f"model {config.name!r} registered twice")
    unknown = set(config.classes) - set(EXPRESSIONS)
    if unknown:
        raise ValueError(f"{config.name}: unknown classes {sorted(unknown)}")
    _REGISTRY[config.name] = config
    return config


def list_models(kind: str | None = "expression") -> list[str]:
    """Registered model names of one kind ("expression", "embedding"; None: all)."""
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def get_config(name: str) -> ModelConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; available: {', '.join(list_models(None))}"
        ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The state dict in a torch file (weights_only): unwrapped from a `cage train`
    checkpoint, DataParallel's "module." prefix removed. ``what`` names the file in the
    one-line ModelError ("weights file", "pretrained file", "--init file")."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{what} not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a user-facing error
        raise ModelError(f"cannot read {what} {path}: {' '.join(str(e).split())[:300]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # checkpoints written by `cage train`
    if not isinstance(state, dict):
        raise ModelError(f"{what} {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_dict(net: nn.Module, path: Path, name: str) -> None:
    """Load a torch state dict (weights_only) into ``net``; name missing/unexpected keys.
    A network with an ``unpack_state_dict`` method turns its compact stored form into its
    state dict first (faceapi-recognition: face-api's uint8-quantised tensors)."""
    state = read_state_dict(path)
    unpack = getattr(net, "unpack_state_dict", None)
    if unpack is not None:
        try:
            state = unpack(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise ModelError(f"{path} does not fit model {name}: "
                             f"{' '.join(str(e).split())[:300]}") from None
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise ModelError(f"{path} does not fit model {name}: " + "; ".join(parts))
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(
            f"{path} does not fit model {name}: {k} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(own[k].shape)}"
        )
    net.load_state_dict(state)


def _few(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


#: faces per network call on a CPU (ExpressionModel.predict): one fixed batch shape. 8 is as
#: fast per face as 64 for the bundled models on one thread, and pads little (docs/performance.md)
CPU_CHUNK = 8


class _Network:
    """A network with its config, on a device: uint8 crops in."""

    def __init__(self, net: nn.Module, config: ModelConfig, weights_sha256: str | None,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        self.net = net.eval().to(device=device, dtype=dtype)
        self.config = config
        self.weights_sha256 = weights_sha256
        self.device = device
        self.dtype = dtype
        self._mean = torch.tensor(config.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(config.std, device=device).view(1, -1, 1, 1)

    @property
    def name(self) -> str:
        return self.config.name

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, H, W, C) -> normalised float input (N, C, H, W) on the device."""
        x = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        return ((x - self._mean) / self._std).to(self.dtype)

    def _in_chunks(self, forward: Callable[[torch.Tensor], torch.Tensor],
                   crops: torch.Tensor) -> torch.Tensor:
        """``forward`` over (N > 0) crops; on a CPU always on :data:`CPU_CHUNK` crops at a
        time (the last chunk padded with copies), since torch's CPU kernels round differently
        for different batch sizes: a face's outputs then do not depend on the faces computed
        with it."""
        if self.device.type != "cpu":
            return forward(crops)
        n = crops.shape[0]
        padded = torch.cat([crops, crops[-1:].expand(-n % CPU_CHUNK, *crops.shape[1:])])
        return torch.cat([forward(c) for c in padded.split(CPU_CHUNK)])[:n]


class ExpressionModel(_Network):
    """A network with its config: preprocessed crops in, canonical predictions out."""

    def __init__(self, net: nn.Module, config: ModelConfig, weights_sha256: str | None,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        super().__init__(net, config, weights_sha256, device, dtype)
        self._canon = [EXPRESSIONS.index(c) for c in config.classes]

    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        """The network's outputs (N, outputs) in float32, class probabilities first."""
        out = self.net(self.normalize(crops)).float()
        k = len(self.config.classes)
        if k and self.config.output != "probs":
            out = torch.cat([out[:, :k].softmax(dim=1), out[:, k:]], dim=1)
        return out

    @torch.inference_mode()
    def predict(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        """Predict from uint8 crops (N, H, W, C) made by :func:`cage_cli.preprocess.crop_faces`.

        Returns ``probs`` (N, 8) in canonical order with NaN for classes the model lacks,
        ``valence`` and ``arousal`` (N,), all float32 numpy arrays.

        On a CPU, a face's values do not depend on the faces predicted with it (which
        ``--batch-size``, the worker threads and the timing of frame groups decide): the
        network always runs on :data:`CPU_CHUNK` faces (the last chunk padded with copies),
        since torch's CPU kernels round differently for different batch sizes.
        """
        n = crops.shape[0]
        k = len(self.config.classes)
        probs = np.full((n, len(EXPRESSIONS)), np.nan, dtype=np.float32)
        if n == 0:
            empty = np.zeros(0, np.float32)
            return {"probs": probs, "valence": empty, "arousal": empty.copy()}
        out = self._in_chunks(self._forward, crops)
        if k:
            p = out[:, :k]
            probs[:, self._canon] = p.cpu().numpy()
        if self.config.va_method == "head":
            va = out[:, k:k + 2]
            if self.config.clip_va:
                va = va.clamp(-1, 1)
            va = va.cpu().numpy()
            valence, arousal = va[:, 0], va[:, 1]
        else:
            valence, arousal = centroid_va(probs)
        return {"probs": probs, "valence": valence.astype(np.float32),
                "arousal": arousal.astype(np.float32)}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' requested but MPS is not available")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in table:
        raise ModelError(f"unknown precision {precision!r} (auto, fp32, fp16, bf16)")
    if precision == "fp16" and device.type == "cpu":
        raise ModelError("fp16 is not supported on CPU; use fp32 or bf16")
    return table[precision]


def create_model(name: str, weights: str | Path | None = None, device: str = "auto",
                 precision: str = "auto") -> ExpressionModel:
    """Build a registered model with its bundled weights (or ``weights``)."""
    config = get_config(name)
    if config.kind != "expression":
        raise ModelError(f"{name} is a face-embedding model, not an expression model; "
                         f"expression models: {', '.join(list_models())}")
    if config.loader is not None:
        return config.loader(name, weights, device, precision)
    return build_model(config, weights, device, precision)


def build_model(config: ModelConfig, weights: str | Path | None = None, device: str = "auto",
                precision: str = "auto") -> ExpressionModel:
    """The network of ``config`` with its bundled weights (or ``weights``) loaded."""
    net, path, dev, dtype = _load(config, weights, device, precision)
    return ExpressionModel(net, config, sha256_file(path), dev, dtype)


def _load(config: ModelConfig, weights: str | Path | None, device: str, precision: str
          ) -> tuple[nn.Module, Path, torch.device, torch.dtype]:
    name = config.name
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    net = config.builder()
    if weights is None:
        if config.weights is None:
            raise ModelError(
                f"model {name} ships no weights; pass --weights PATH (see {config.card})"
            )
        path = WEIGHTS_DIR / config.weights
    else:
        path = Path(weights)
    load_state_dict(net, path, name)
    return net, path, dev, dtype


class EmbeddingModel(_Network):
    """A face-embedding network with its config: uint8 crops in, descriptors out."""

    @torch.inference_mode()
    def embed(self, crops: torch.Tensor | np.ndarray) -> np.ndarray:
        """Descriptors (N, embedding_size) float32 of uint8 crops (N, S, S, C), S = input_size.
        On a CPU, in chunks of :data:`CPU_CHUNK` (padded), as ExpressionModel.predict: a
        face's descriptor does not depend on the faces embedded with it."""
        crops = torch.as_tensor(crops)
        s = self.config.input_size
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (s, s, self.config.channels):
            raise ValueError(f"{self.name} takes (N, {s}, {s}, {self.config.channels}) crops, "
                             f"got {tuple(crops.shape)}")
        if not len(crops):
            return np.zeros((0, self.config.embedding_size), np.float32)
        return self._in_chunks(lambda c: self.net(self.normalize(c)).float(),
                               crops).cpu().numpy()


def create_embedding_model(name: str, weights: str | Path | None = None, device: str = "auto",
                           precision: str = "fp32") -> EmbeddingModel:
    """Build a registered face-embedding model with its bundled weights (or ``weights``).
    Errors (unknown model, missing or unreadable weights) are one-line ModelErrors."""
    config = get_config(name)
    if config.kind != "embedding":
        raise ModelError(f"{name} is not a face-embedding model; embedding models: "
                         f"{', '.join(list_models('embedding'))}")
    net, path, dev, dtype = _load(config, weights, device, precision)
    return EmbeddingModel(net, config, sha256_file(path), dev, dtype)
