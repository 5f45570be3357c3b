"""cage: annotate faces in photos and videos with facial expression, valence and arousal.

Library entry points (imported lazily so that ``cage --help`` does not load torch)::

    from cage_cli import annotate, AnnotateOptions, create_model, list_models, SCHEMA
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
#: The model `cage annotate` and `cage evaluate` use without --model; see README.
DEFAULT_MODEL = "faceapi-expression"

_EXPORTS = {
    "annotate": "annotation.running.pipeline",
    "AnnotateOptions": "annotation.running.pipeline",
    "RunOptions": "annotation.running.pipeline",
    "Pipeline": "annotation.running.pipeline",
    "annotate_to": "annotation.running.runner",
    "create_model": "models",
    "list_models": "models",
    "SCHEMA": "schema",
    "SCHEMA_VERSION": "schema",
    "CSV_SCHEMA": "schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'cage_cli' has no attribute {name!r}")
