"""Convert face-api.js's FaceRecognitionNet weights (TF.js format) to cage's stored form.

Dev-only. Reads ``face_recognition_model-weights_manifest.json`` and its ``.bin`` and writes
cage_cli/models/weights/faceapi_recognition.pt: face-api's tensors by face-api's names, as the
.bin stores them (uint8 codes with 0-d float64 ``NAME:scale`` and ``NAME:min`` tensors, or
float32 where face-api does not quantise), so the file is 6.5 MB, not 22 MB. Loading it
(cage_cli.models.faceapi_recognition.unpack_state_dict) dequantises exactly as
tf.io.decodeWeights does (the same arithmetic as scripts/convert_faceapi_expression.py's
``decode_weights``, checked below) and folds each convolution's bias and scale layer into it.

Whole recipe (regenerates the weights and the test fixture)::

    cd scripts/faceapi && npm ci && cd ../..          # @vladmandic/face-api 1.7.15, tfjs 4.22.0
    python scripts/convert_faceapi_recognition.py \\
        --model-dir scripts/faceapi/node_modules/@vladmandic/face-api/model
    python scripts/faceapi/make_recognition_fixture.py   # crops + Node reference -> fixtures
    pytest tests/test_faceapi_recognition.py
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
sys.path.insert(0, str(REPO / "scripts"))

from convert_faceapi_expression import decode_weights  # noqa: E402

from cage_cli.models.faceapi_recognition import (  # noqa: E402
    MIN,
    SCALE,
    FaceRecognitionNet,
    dequantize,
    unpack_state_dict,
)

DEFAULT_MODEL_DIR = REPO / "scripts/faceapi/node_modules/@vladmandic/face-api/model"
DEFAULT_OUT = REPO / "cage_cli/models/weights/faceapi_recognition.pt"
MANIFEST = "face_recognition_model-weights_manifest.json"


def pack(model_dir: Path) -> dict[str, torch.Tensor]:
    """face-api's tensors as stored in the .bin (one group, weights back to back)."""
    manifest = json.loads((model_dir / MANIFEST).read_text())
    out: dict[str, torch.Tensor] = {}
    for group in manifest:
        data = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            name, shape, q = spec["name"], tuple(spec["shape"]), spec.get("quantization")
            if spec["dtype"] != "float32" or (q and q["dtype"] != "uint8"):
                raise ValueError(f"{name}: unsupported dtype {spec['dtype']} / {q}")
            dtype = np.uint8 if q else np.dtype("<f4")
            size = int(np.prod(shape, dtype=np.int64))
            nbytes = size * np.dtype(dtype).itemsize
            raw = np.frombuffer(data[offset:offset + nbytes], dtype=dtype).reshape(shape)
            offset += nbytes
            out[name] = torch.from_numpy(raw.astype(dtype, copy=True))
            if q:
                out[name + SCALE] = torch.tensor(q["scale"], dtype=torch.float64)
                out[name + MIN] = torch.tensor(q["min"], dtype=torch.float64)
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes left over after {group['paths']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                    help="folder with the TF.js manifest and .bin (face-api's model/)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    packed = pack(args.model_dir)
    decoded = decode_weights(args.model_dir, MANIFEST)  # the expression converter's decoder
    for name, value in decoded.items():
        if not np.array_equal(dequantize(packed, name), value):
            raise ValueError(f"{name}: dequantised values differ from decode_weights'")
    net = FaceRecognitionNet()
    net.load_state_dict(unpack_state_dict(dict(packed)), strict=True)  # every key, every shape
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(packed, args.out)
    n = sum(p.numel() for p in net.parameters())
    print(f"{len(decoded)} face-api tensors, {n} parameters -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
