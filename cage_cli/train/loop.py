"""`cage train`: the CAGE recipe (paper + the authors' training scripts) on your data.

Defaults are the paper's (Wagner et al. 2024, Table "Hyperparameters" and Sec. 4.2): AdamW,
lr 5e-5, cosine annealing, batch 128, loss = class-weighted cross-entropy + 5 x MSE on
valence/arousal (``--task combined``), or CCC + 3 x MSE per dimension (``--task va``), with
the authors' augmentation. Deviations are listed in docs/training.md.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.cage import (
    AFFECTNET7,
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_BACKBONE,
    CageSpec,
    build_net,
    model_config,
    spec_name,
)
from ..models.registry import ModelError, read_state_dict, resolve_device
from ..schema import EXPRESSIONS
from . import datasets as ds
from .metrics import classification_metrics, va_metrics

#: The authors' cross-entropy weights (paper, Table 1): inverse class frequency in AffectNet's
#: training set, normalised to sum 1.
PAPER_WEIGHTS_8 = (0.015605, 0.008709, 0.046078, 0.083078, 0.185434, 0.305953, 0.046934, 0.30821)
PAPER_WEIGHTS_7 = (0.022600, 0.012589, 0.066464, 0.120094, 0.265305, 0.444943, 0.068006)

TASKS = ("combined", "discrete", "va")
MONITORS = {"loss": "min", "f1": "max", "accuracy": "max", "ccc": "max", "rmse": "min"}
CSV_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
              "val_f1_macro", "val_f1_weighted", "val_valence_rmse", "val_arousal_rmse",
              "val_va_rmse", "val_valence_ccc", "val_arousal_ccc", "val_va_ccc", "monitor",
              "best", "seconds")


class TrainError(Exception):
    """Bad training options; the message is one user-facing line."""


@dataclass
class TrainOptions:
    data: str
    out: str = "runs/cage"
    val: str | None = None
    images: str | None = None  # root of relative CSV paths (default: the CSV's folder)
    val_images: str | None = None
    task: str = "combined"  # combined | discrete | va
    classes: int = 8  # 8 (AffectNet-8) | 7 (AffectNet-7: no contempt)
    backbone: str = TORCHVISION_BACKBONE
    input_size: int | None = None  # timm backbones only (default: the backbone's)
    pretrained_file: str | None = None  # offline ImageNet weights for the backbone
    init: str | None = None  # start from (matching tensors of) a checkpoint or state dict
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    alpha: float = 5.0  # combined: CE + alpha * MSE
    beta: float = 3.0  # va: CCC + beta * MSE
    class_weights: str = "paper"  # paper | auto | none | comma-separated list
    augment: bool = True
    balance: bool = False
    crop: bool = False
    monitor: str = "loss"
    max_steps: int | None = None
    workers: int | None = None
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA
    seed: int = 0
    resume: bool = False
    quiet: bool = False


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    model_name: str
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- losses

def ccc_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """1 - CCC over the batch (the authors' CCCLoss is -CCC: same gradient)."""
    if pred.shape[0] < 2:
        return pred.new_zeros(())
    pm, tm = pred.mean(), true.mean()
    cov = ((pred - pm) * (true - tm)).sum() / (pred.shape[0] - 1)
    den = pred.var() + true.var() + (pm - tm) ** 2
    return 1 - 2 * cov / den.clamp_min(1e-8)


def compute_loss(out: torch.Tensor, y: torch.Tensor, va: torch.Tensor, spec: CageSpec,
                 task: str, ce_weight: torch.Tensor | None, alpha: float, beta: float
                 ) -> torch.Tensor:
    out = out.float()
    k = len(spec.classes)
    loss = out.new_zeros(())
    if k and task != "va":
        valid = y >= 0
        if valid.any():
            loss = loss + F.cross_entropy(out[:, :k], y, weight=ce_weight, ignore_index=-100)
    if spec.va and task != "discrete":
        m = ~torch.isnan(va).any(dim=1)
        if m.any():
            p, t = out[m, k:k + 2], va[m]
            if task == "va":
                for d in range(2):
                    loss = loss + ccc_loss(p[:, d], t[:, d]) + beta * F.mse_loss(p[:, d], t[:, d])
            else:
                loss = loss + alpha * F.mse_loss(p, t)
    return loss


def class_weights(spec_classes: tuple[str, ...], mode: str, counts: dict[int, int]
                  ) -> torch.Tensor | None:
    k = len(spec_classes)
    mode = mode.strip().lower()
    if mode == "none" or k == 0:
        return None
    if mode == "paper":
        if spec_classes == EXPRESSIONS:
            return torch.tensor(PAPER_WEIGHTS_8)
        if spec_classes == AFFECTNET7:
            return torch.tensor(PAPER_WEIGHTS_7)
        raise TrainError("paper class weights exist for 8 and 7 classes only")
    if mode == "auto":
        n = np.array([counts.get(EXPRESSIONS.index(c), 0) for c in spec_classes], np.float64)
        w = np.zeros(k)
        w[n > 0] = 1.0 / n[n > 0]
        return torch.tensor(w / w.sum(), dtype=torch.float32)
    try:
        w = [float(x) for x in mode.split(",")]
    except ValueError:
        raise TrainError(f"--class-weights {mode!r}: use paper, auto, none or {k} numbers "
                         "separated by commas") from None
    if len(w) != k or any(x < 0 for x in w):
        raise TrainError(f"--class-weights needs {k} non-negative numbers, got {len(w)}")
    return torch.tensor(w, dtype=torch.float32)


# --------------------------------------------------------------------------- transforms

def train_transform(spec: CageSpec, augment: bool):
    """The authors' augmentation (paper Sec. 4.2), then ToTensor + Normalize (+ erasing)."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if not augment:
        return T.Compose(norm)
    return T.Compose([
        T.RandomHorizontalFlip(0.5),
        T.RandomGrayscale(0.01),
        T.RandomRotation(10),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.RandomPerspective(distortion_scale=0.2, p=0.5),
        *norm,
        T.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3), value="random"),
    ])


def eval_transform(spec: CageSpec):
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(spec.mean, spec.std)])


# --------------------------------------------------------------------------- setup

def base_spec(opts: TrainOptions) -> CageSpec:
    """The spec from the options alone (timm backbones: input size etc. still the defaults)."""
    if opts.task not in TASKS:
        raise TrainError(f"--task {opts.task!r}: use one of {', '.join(TASKS)}")
    if opts.classes not in (7, 8):
        raise TrainError("--classes must be 8 (AffectNet-8) or 7 (AffectNet-7, no contempt)")
    classes = () if opts.task == "va" else (EXPRESSIONS if opts.classes == 8 else AFFECTNET7)
    spec = CageSpec(backbone=opts.backbone, classes=classes, va=opts.task != "discrete",
                    dropout=0.3 if opts.task == "va" else 0.0)
    if spec.torchvision and opts.input_size not in (None, 224):
        raise TrainError("--input-size: torchvision maxvit_t takes 224 only")
    if not spec.torchvision:
        import timm

        if not timm.is_model(spec.backbone):
            raise TrainError(f"unknown backbone {spec.backbone!r}: use maxvit_t (torchvision) "
                             "or a timm model name")
    return spec


def make_spec(opts: TrainOptions) -> tuple[CageSpec, nn.Module]:
    """The final spec and its network (timm: input size, mean, std from the backbone)."""
    spec = base_spec(opts)
    net = build_net(spec, opts.pretrained_file)
    if spec.torchvision:
        return spec, net
    cfg = getattr(net.backbone, "pretrained_cfg", None) or {}
    size = opts.input_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
    spec = CageSpec(backbone=spec.backbone, classes=spec.classes, va=spec.va, input_size=size,
                    mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
                    std=tuple(cfg.get("std") or IMAGENET_STD), dropout=spec.dropout)
    return spec, net


def init_from(net: nn.Module, path: str) -> str:
    """Copy every tensor of ``path`` whose name and shape match (``--init``)."""
    own = net.state_dict()
    take = {k: v for k, v in read_state_dict(path, "--init file").items()
            if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not take:
        raise ModelError(f"--init file {path} shares no tensors with this model")
    net.load_state_dict(take, strict=False)
    return f"initialised {len(take)} of {len(own)} tensors from {path}"


def _loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
            seed: int):
    from torch.utils.data import DataLoader

    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      generator=g, worker_init_fn=_seed_worker if workers else None)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _prepare(path: str, images: str | None, opts: TrainOptions, spec: CageSpec, what: str,
             cache: Path, log, device: torch.device) -> ds.FaceData:
    try:
        data = ds.load_data(path, images, progress=None)
    except ds.DataError as e:
        raise ds.DataError(f"{what}: {e}") from None
    if opts.crop:
        log(f"{what}: detecting faces (MTCNN) in {len(data)} images")
        data = ds.detect_faces(data, str(device), cache)
    need = {"combined": "any", "discrete": "labels", "va": "va"}[opts.task]
    data = ds.restrict(data, spec.classes, need)
    if not data.samples:
        raise ds.DataError(f"{what}: {path}: no usable samples for --task {opts.task}"
                           + (f" ({'; '.join(data.notes)})" if data.notes else ""))
    return data


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def run_eval(net: nn.Module, loader, spec: CageSpec, opts: TrainOptions, device: torch.device,
             amp: bool) -> dict[str, Any]:
    """Validation loss (unweighted CE, as the authors) and metrics."""
    net.eval()
    k = len(spec.classes)
    losses, preds, trues, vas, va_true = [], [], [], [], []
    for x, y, va in loader:
        x, y, va = x.to(device), y.to(device), va.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = net(x)
        out = out.float()
        losses.append(compute_loss(out, y, va, spec, opts.task, None, opts.alpha,
                                   opts.beta).item())
        if k:
            preds.append(out[:, :k].argmax(1).cpu())
            trues.append(y.cpu())
        if spec.va:
            vas.append(out[:, k:k + 2].cpu())
            va_true.append(va.cpu())
    m: dict[str, Any] = {"loss": float(np.mean(losses)) if losses else math.nan}
    if k and preds:
        p, t = torch.cat(preds).numpy(), torch.cat(trues).numpy()
        ok = t >= 0
        if ok.any():
            m["classification"] = classification_metrics(t[ok], p[ok], spec.classes)
    if spec.va and vas:
        p, t = torch.cat(vas).numpy(), torch.cat(va_true).numpy()
        ok = ~np.isnan(t).any(axis=1)
        if ok.any():
            m["va"] = va_metrics(p[ok, 0], p[ok, 1], t[ok, 0], t[ok, 1])
    return m


def monitor_value(name: str, m: dict[str, Any]) -> float:
    if name == "loss":
        return m.get("loss", math.nan)
    c, v = m.get("classification"), m.get("va")
    if name == "accuracy":
        return c["accuracy"] if c else math.nan
    if name == "f1":
        return c["macro"]["f1"] if c else math.nan
    if name == "ccc":
        return (v["valence"]["ccc"] + v["arousal"]["ccc"]) / 2 if v else math.nan
    return v["va"]["rmse"] if v else math.nan  # rmse


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


# --------------------------------------------------------------------------- main loop

def train(opts: TrainOptions) -> TrainResult:
    """Train; write ``last.pt``, ``best.pt``, ``metrics.csv``, ``metrics.jsonl`` under out."""
    from rich.console import Console

    console = Console(stderr=True, quiet=opts.quiet)

    def log(msg: str) -> None:
        console.print(msg, highlight=False, markup=False, soft_wrap=True)

    if opts.monitor not in MONITORS:
        raise TrainError(f"--monitor {opts.monitor!r}: use one of {', '.join(MONITORS)}")
    if opts.epochs < 1 or opts.batch_size < 1:
        raise TrainError("--epochs and --batch-size must be at least 1")
    if opts.max_steps is not None and opts.max_steps < 1:
        raise TrainError("--max-steps must be at least 1")
    out = Path(opts.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if opts.resume and not last_path.is_file():
        raise TrainError(f"--resume: no {last_path} to resume from")
    if not opts.resume and last_path.exists():
        raise TrainError(f"{out} already holds a run; pass --resume to continue it or "
                         "choose another --out")
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)

    device = resolve_device(opts.device)
    amp = (device.type == "cuda") if opts.amp is None else bool(opts.amp)
    if amp and device.type != "cuda":
        raise TrainError("--amp needs a CUDA device")

    spec = base_spec(opts)
    mon_needs_cls = opts.monitor in ("f1", "accuracy")
    if (mon_needs_cls and not spec.classes) or (opts.monitor in ("ccc", "rmse") and
                                                 (not spec.va or opts.task == "discrete")):
        raise TrainError(f"--monitor {opts.monitor} does not apply to --task {opts.task}")
    notes: list[str] = []
    train_data = _prepare(opts.data, opts.images, opts, spec, "training data",
                          out / "face_boxes.json", log, device)
    if opts.balance:
        if not train_data.has_labels:
            raise TrainError("--balance needs expression labels")
        train_data = ds.balance(train_data, opts.seed)
    notes += [f"training data: {n}" for n in train_data.notes]
    if opts.task == "combined" and not train_data.has_va:
        notes.append("no valence/arousal labels in the training data: the VA loss is off and "
                     "the model's valence/arousal outputs stay untrained")
    if opts.task == "combined" and not train_data.has_labels:
        notes.append("no expression labels in the training data: only the VA loss is used")
    val_data = None
    if opts.val:
        val_data = _prepare(opts.val, opts.val_images, opts, spec, "validation data (--val)",
                            out / "face_boxes_val.json", log, device)
        notes += [f"validation data: {n}" for n in val_data.notes]
    else:
        notes.append(f"no --val: best.pt is chosen by the training loss ({opts.monitor} "
                     "monitoring needs --val)" if opts.monitor != "loss" else
                     "no --val: best.pt is chosen by the training loss")
    spec, net = make_spec(opts)
    name = spec_name(spec)
    if opts.init:
        notes.append(init_from(net, opts.init))
    config = model_config(name, spec)
    ce_weight = class_weights(spec.classes, opts.class_weights, train_data.class_counts()) \
        if opts.task != "va" else None
    if ce_weight is not None:
        ce_weight = ce_weight.to(device)
    out.mkdir(parents=True, exist_ok=True)
    for n in notes:
        log(f"note: {n}")

    workers = opts.workers if opts.workers is not None else min(8, os.cpu_count() or 1)
    train_set = ds.FaceDataset(train_data.samples, config, train_transform(spec, opts.augment))
    train_loader = _loader(train_set, opts.batch_size, True, workers, device, opts.seed)
    val_loader = None
    if val_data is not None:
        val_set = ds.FaceDataset(val_data.samples, config, eval_transform(spec))
        val_loader = _loader(val_set, opts.batch_size, False, workers, device, opts.seed)

    steps_per_epoch = len(train_loader)
    total_steps = opts.epochs * steps_per_epoch
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, step, best_value, best_epoch = 1, 0, None, None
    if opts.resume:
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise TrainError(f"{last_path} is not a `cage train` checkpoint")
        was = CageSpec.from_dict(ck["model"])
        if was != spec:
            raise TrainError(f"{last_path} was trained as {was.describe()}; resume with the "
                             "same --task/--classes/--backbone")
        net.load_state_dict(ck["state_dict"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step = int(ck["epoch"]) + 1, int(ck["step"])
        best_value, best_epoch = ck["best"]["value"], ck["best"]["epoch"]
        log(f"resumed from {last_path} (epoch {ck['epoch']}, step {step})")

    log(f"training {name} ({spec.describe()}) on {len(train_data)} faces"
        + (f", validating on {len(val_data)}" if val_data else "")
        + f"; {device.type}{', amp' if amp else ''}; {steps_per_epoch} steps/epoch")
    result = TrainResult(out, best_path, last_path, name, notes=notes)
    mode = MONITORS[opts.monitor] if val_loader is not None else "min"
    k = len(spec.classes)
    progress = _progress(console)
    epoch = start_epoch - 1
    with progress:
        for epoch in range(start_epoch, opts.epochs + 1):
            if opts.max_steps and step >= opts.max_steps:
                break
            t0 = time.time()
            net.train()
            task = progress.add_task(f"epoch {epoch}/{opts.epochs}", total=steps_per_epoch,
                                     loss="")
            losses, correct, seen = [], 0, 0
            for x, y, va in train_loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                va = va.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    out_t = net(x)
                loss = compute_loss(out_t, y, va, spec, opts.task, ce_weight, opts.alpha,
                                    opts.beta)
                if not torch.isfinite(loss):
                    raise TrainError(f"loss is {loss.item()} at step {step + 1}; "
                                     "try a lower --lr")
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                result.step_losses.append(losses[-1])
                if k:
                    ok = y >= 0
                    correct += int((out_t[:, :k].argmax(1)[ok] == y[ok]).sum())
                    seen += int(ok.sum())
                progress.update(task, advance=1, loss=f"loss {np.mean(losses[-20:]):.4f}")
                if opts.max_steps and step >= opts.max_steps:
                    break
            progress.remove_task(task)
            row: dict[str, Any] = {"epoch": epoch, "step": step,
                                   "lr": optimizer.param_groups[0]["lr"],
                                   "train_loss": float(np.mean(losses)),
                                   "train_accuracy": correct / seen if seen else None}
            if val_loader is not None:
                m = run_eval(net, val_loader, spec, opts, device, amp)
                value = monitor_value(opts.monitor, m)
                row.update(_flat_metrics(m))
            else:
                value = row["train_loss"]
            is_best = _better(value, best_value, mode)
            if is_best:
                best_value, best_epoch = value, epoch
            row.update(monitor=value, best=is_best, seconds=round(time.time() - t0, 3))
            ck = _checkpoint(net, spec, name, epoch, step, row, opts, best_value, best_epoch)
            if is_best:
                _save(ck, best_path)
            ck.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                      scaler=scaler.state_dict() if amp else None)
            _save(ck, last_path)
            _append_history(out, row)
            result.history.append(row)
            log(_summary(row, opts.monitor if val_loader is not None else "train loss"))
    if not best_path.exists():
        raise TrainError("no epoch was run (nothing left to do: raise --epochs or --max-steps)")
    log(f"best: epoch {best_epoch} ({opts.monitor if val_loader else 'train loss'} "
        f"{best_value:.4f}) -> {best_path}")
    return result


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                    console=console, transient=True)


def _flat_metrics(m: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"val_loss": m["loss"]}
    c, v = m.get("classification"), m.get("va")
    if c:
        row.update(val_accuracy=c["accuracy"], val_f1_macro=c["macro"]["f1"],
                   val_f1_weighted=c["weighted"]["f1"])
    if v:
        for d in ("valence", "arousal", "va"):
            row[f"val_{d}_rmse"] = v[d]["rmse"]
            row[f"val_{d}_ccc"] = v[d]["ccc"]
    return row


def _summary(row: dict[str, Any], monitor: str) -> str:
    parts = [f"epoch {row['epoch']}", f"step {row['step']}", f"train loss {row['train_loss']:.4f}"]
    if row.get("train_accuracy") is not None:
        parts.append(f"train acc {row['train_accuracy']:.3f}")
    for key, label in (("val_loss", "val loss"), ("val_accuracy", "val acc"),
                       ("val_f1_macro", "val F1"), ("val_va_rmse", "val VA RMSE"),
                       ("val_va_ccc", "val VA CCC")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.4f}")
    parts.append(f"{row['seconds']:.1f}s")
    return ", ".join(parts) + (f"  * best {monitor}" if row["best"] else "")


def _checkpoint(net: nn.Module, spec: CageSpec, name: str, epoch: int, step: int,
                row: dict[str, Any], opts: TrainOptions, best_value, best_epoch) -> dict:
    """A dict torch.load(weights_only=True) can read: tensors and plain Python values only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model_name": name,
        "model": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "epoch": epoch,
        "step": step,
        "metrics": {k: _plain(v) for k, v in row.items()},
        "best": {"monitor": opts.monitor, "value": _plain(best_value), "epoch": best_epoch},
        "options": {k: _plain(v) for k, v in asdict(opts).items()},
    }


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_history(out: Path, row: dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
    path = out / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
