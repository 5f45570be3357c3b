"""Convert face-api.js's FaceExpressionNet weights (TF.js format) to a PyTorch state dict.

Dev-only. Reads ``face_expression_model-weights_manifest.json`` and its ``.bin`` shard(s) with
numpy (dequantising uint8/uint16 ``scale``/``min`` and float16 weights exactly as
tf.io.decodeWeights does), maps them onto :class:`cage_cli.models.faceapi.FaceExpressionNet`
and writes cage_cli/models/weights/faceapi_expression.pt (a plain state dict).

Whole recipe (regenerates the weights and the test fixture)::

    cd scripts/faceapi && npm ci && cd ../..          # @vladmandic/face-api 1.7.15, tfjs 4.22.0
    python scripts/convert_faceapi_expression.py \\
        --model-dir scripts/faceapi/node_modules/@vladmandic/face-api/model
    python scripts/faceapi/make_fixture.py            # crops + Node reference -> tests/fixtures
    pytest tests/test_faceapi.py

TF.js layouts -> PyTorch: conv filters (kh, kw, in, out) -> (out, in, kh, kw); depthwise
filters (kh, kw, in, 1) -> (in, 1, kh, kw); fc weights (in, out) -> (out, in).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cage_cli.models.faceapi import FaceExpressionNet  # noqa: E402

DEFAULT_MODEL_DIR = REPO / "scripts/faceapi/node_modules/@vladmandic/face-api/model"
DEFAULT_OUT = REPO / "cage_cli/models/weights/faceapi_expression.pt"
MANIFEST = "face_expression_model-weights_manifest.json"

_NUMPY = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
          "float16": np.float16}


def decode_weights(model_dir: Path, manifest_name: str = MANIFEST) -> dict[str, np.ndarray]:
    """All weights of a TF.js weights manifest as float32/int32 numpy arrays, by name."""
    manifest = json.loads((model_dir / manifest_name).read_text())
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        # A group's shards are one byte stream, the weights packed back to back.
        data = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], tuple(spec["shape"]), spec["dtype"]
            if dtype not in ("float32", "int32"):
                raise ValueError(f"{name}: unsupported dtype {dtype}")
            size = int(np.prod(shape, dtype=np.int64))
            q = spec.get("quantization")
            stored = q["dtype"] if q else dtype
            stored_dtype = np.dtype(_NUMPY[stored]).newbyteorder("<")
            nbytes = size * stored_dtype.itemsize
            raw = np.frombuffer(data[offset:offset + nbytes], dtype=stored_dtype)
            offset += nbytes
            if q and stored in ("uint8", "uint16"):
                # tfjs: Float32Array(values)[i] = v * scale + min, computed in float64.
                values = raw.astype(np.float64) * q["scale"] + q["min"]
                values = np.round(values) if dtype == "int32" else values
            elif q and stored == "float16":
                if dtype != "float32":
                    raise ValueError(f"{name}: float16 quantization of {dtype}")
                values = raw.astype(np.float32)
            elif q:
                raise ValueError(f"{name}: unknown quantization dtype {stored}")
            else:
                values = raw
            out[name] = np.asarray(values, dtype=_NUMPY[dtype]).reshape(shape)
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes left over after {group['paths']}")
    return out


def to_state_dict(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map face-api weight names onto FaceExpressionNet's state dict keys."""
    w = dict(weights)
    sd: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        return w.pop(name)

    for b in range(4):
        block = f"dense{b}"
        for c in range(4):
            src, dst = f"{block}/conv{c}", f"{block}.conv{c}"
            if b == 0 and c == 0:  # plain 3x3 convolution
                sd[f"{dst}.weight"] = take(f"{src}/filters").transpose(3, 2, 0, 1)
                sd[f"{dst}.bias"] = take(f"{src}/bias")
            else:  # depthwise-separable: bias is added after the pointwise convolution
                dw, pw = take(f"{src}/depthwise_filter"), take(f"{src}/pointwise_filter")
                sd[f"{dst}.depthwise.weight"] = dw.transpose(2, 3, 0, 1)
                sd[f"{dst}.pointwise.weight"] = pw.transpose(3, 2, 0, 1)
                sd[f"{dst}.pointwise.bias"] = take(f"{src}/bias")
    sd["fc.weight"] = take("fc/weights").T
    sd["fc.bias"] = take("fc/bias")
    if w:
        raise ValueError(f"unused weights: {sorted(w)}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                    help="folder with the TF.js manifest and .bin (face-api's model/)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    state = to_state_dict(decode_weights(args.model_dir))
    net = FaceExpressionNet()
    net.load_state_dict(state, strict=True)  # every key, every shape
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    n = sum(v.numel() for v in state.values())
    print(f"{len(state)} tensors, {n} parameters -> {args.out}")


if __name__ == "__main__":
    main()
