"""Small helpers for reading architectures off state dicts."""
from typing import Any, Dict, Mapping

from torch import Tensor


def sub_state_dict(state_dict: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """The tensors under `prefix`, without it."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered blocks (`<prefix><i>.`) the state dict holds."""
    return len({key[len(prefix):].split(".")[0] for key in state_dict if key.startswith(prefix)})


def merge_settings(settings: Mapping[str, Any], read: Mapping[str, Any]) -> Dict[str, Any]:
    """`settings` updated with those `read` off tensors, dict values merged key by key: the tensors tell the
    shapes, and what they cannot tell (say, a pooler's type) is kept."""
    merged = dict(settings)
    for key, value in read.items():
        old = merged.get(key)
        merged[key] = merge_settings(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return merged
