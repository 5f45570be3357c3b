"""Expression models: ``list_models()``, ``create_model(name, weights=None, device=...)``."""

from .registry import (
    CropConfig,
    ExpressionModel,
    ModelConfig,
    ModelError,
    create_model,
    get_config,
    list_models,
    register_model,
)

# Each module below registers its models on import.
from . import mini_xception  # noqa: E402,F401  isort: skip
from . import faceapi  # noqa: E402,F401  isort: skip
from . import cage  # noqa: E402,F401  isort: skip

#: The default of `cage annotate`: face-api's FaceExpressionNet (colour, 112 px); see README.
DEFAULT_MODEL = "faceapi-expression"

__all__ = [
    "DEFAULT_MODEL",
    "CropConfig",
    "ExpressionModel",
    "ModelConfig",
    "ModelError",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
]
