"""Expression-model speed: faces per second through ``ExpressionModel.predict``, per batch size.

    python benchmarks/model_speed.py                      # every registered model
    python benchmarks/model_speed.py fer-mini-xception --batch 1 64 --device cpu

Feeds random uint8 crops of each model's input size (the network, its normalisation, softmax
and valence/arousal; not face detection or cropping). Models without bundled weights are timed
with their untrained network (the speed does not depend on the weights). faces/s comes from the
median wall time of a call; "CPU ms/face" is the process CPU time (all threads) per face, which
other work on a shared machine barely changes. Prints a table and writes JSON to
benchmarks/results/model_speed.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from cage_cli.models import ModelError, create_model, get_config, list_models
from cage_cli.models.registry import ExpressionModel, resolve_device, resolve_dtype

OUT = Path(__file__).parent / "results" / "model_speed.json"


def load(name: str, device: str, precision: str) -> tuple[ExpressionModel, str]:
    config = get_config(name)
    if config.bundled:
        return create_model(name, device=device, precision=precision), "bundled"
    dev = resolve_device(device)
    net = config.builder()
    return ExpressionModel(net, config, None, dev, resolve_dtype(precision, dev)), "untrained"


def faces_per_second(model: ExpressionModel, batch: int, seconds: float, warmup: int) -> dict:
    c = model.config
    crops = torch.randint(0, 256, (batch, c.input_size, c.input_size, c.channels),
                          dtype=torch.uint8)
    for _ in range(warmup):
        model.predict(crops)
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        model.predict(crops)  # returns numpy: the device work is finished
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu_start  # all threads; barely affected by other processes
    times.sort()
    median = times[len(times) // 2]
    return {"batch": batch, "calls": len(times), "median_s": median,
            "faces_per_s": batch / median, "ms_per_face": 1000 * median / batch,
            "cpu_ms_per_face": 1000 * cpu / (batch * len(times))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model names (default: all registered)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per model and batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or list_models()
    rows = []
    skipped = {}
    for name in names:
        try:
            model, weights = load(name, args.device, args.precision)
        except ModelError as e:  # e.g. a model built only from a user's checkpoint
            skipped[name] = str(e)
            continue
        params = sum(p.numel() for p in model.net.parameters())
        for batch in args.batch:
            r = faces_per_second(model, batch, args.seconds, args.warmup)
            rows.append({"model": name, "weights": weights, "params": params,
                         "device": str(model.device), "dtype": str(model.dtype).split(".")[-1],
                         **r})
    print(f"{'model':24s} {'batch':>5s} {'faces/s':>10s} {'ms/face':>9s} {'CPU ms/face':>11s} "
          f"{'params':>11s}")
    for r in rows:
        print(f"{r['model']:24s} {r['batch']:5d} {r['faces_per_s']:10.1f} "
              f"{r['ms_per_face']:9.3f} {r['cpu_ms_per_face']:11.3f} {r['params']:11,d}"
              + ("  (untrained)" if r["weights"] == "untrained" else ""))
    for name, why in skipped.items():
        print(f"{name:24s} skipped: {why}")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(),
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
           "load_average_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "results": rows, "skipped": skipped}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"threads {env['threads']}, torch {env['torch']}, load average "
          f"{env['load_average_1min']:.2f} (other work on the machine slows every number); "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
