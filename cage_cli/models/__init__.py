"""Expression models: ``list_models()``, ``create_model(name, weights=None, device=...)``;
face-embedding models: ``list_models("embedding")``, ``create_embedding_model(name)``."""

from .registry import (
    CropConfig,
    EmbeddingModel,
    ExpressionModel,
    ModelConfig,
    ModelError,
    create_embedding_model,
    create_model,
    get_config,
    list_models,
    register_model,
)

# Each module below registers its models on import.
from . import mini_xception  # noqa: E402,F401  isort: skip
from . import faceapi  # noqa: E402,F401  isort: skip
from . import cage  # noqa: E402,F401  isort: skip
from . import faceapi_recognition  # noqa: E402,F401  isort: skip

#: The default of `cage annotate` and `cage evaluate`: face-api's FaceExpressionNet (colour,
#: 112 px); defined in cage_cli/__init__.py so that the CLI's help needs no torch.
from .. import DEFAULT_MODEL  # noqa: E402  isort: skip

__all__ = [
    "DEFAULT_MODEL",
    "CropConfig",
    "EmbeddingModel",
    "ExpressionModel",
    "ModelConfig",
    "ModelError",
    "create_embedding_model",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
]
