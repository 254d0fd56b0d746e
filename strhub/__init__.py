"""strhub: scene text recognition with CLIP4STR, STR-Adapter and PARSeq.

The front door (importing it loads nothing heavy; each name imports its module when first used):

    from strhub import load_model, create_model, list_experiments, read
    model = load_model("outputs/vl4str/<run>")          # a checkpoint file or run folder, any family
    texts, confidences = read(model, ["word.png"])
"""
from typing import Any

__version__ = "1.0.0"
__all__ = ["create_model", "list_experiments", "load_model", "read"]

_EXPORTS = {"load_model": "strhub.models.checkpoint", "create_model": "strhub.models.utils",
            "list_experiments": "strhub.api", "read": "strhub.api"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'strhub' has no attribute {name!r}")
