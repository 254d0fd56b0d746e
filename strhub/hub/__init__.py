"""Released checkpoints by name: the catalogue (`released.yaml`) and a verified, resumable download cache.

    resolve_checkpoint("clip4str_large_3c9d881b88")   # the cached file, downloaded and checked the first time
    resolve_checkpoint("outputs/run/last.ckpt")        # a path that exists is returned as it is
    [entry.name for entry in list_released()]

A low layer: it imports nothing from strhub but the key check, and the models layer calls it.
"""
import difflib
from pathlib import Path
from typing import Union

from strhub.hub.catalogue import Released, find_released, list_released
from strhub.hub.download import CheckpointUnavailable, cache_dir, fetch, offline

__all__ = ["CheckpointUnavailable", "Released", "cache_dir", "list_released", "offline", "resolve_checkpoint"]


def resolve_checkpoint(name_or_path: Union[str, Path]) -> Path:
    """A path that exists, as it is; else the cached file of the released checkpoint of that name (downloaded,
    checked and cached the first time). FileNotFoundError, one line, for neither (naming close released names), and
    CheckpointUnavailable (a FileNotFoundError) for a released one that cannot be had now."""
    path = Path(name_or_path)
    if path.exists():
        return path
    entry = find_released(str(name_or_path))
    if entry is not None:
        return fetch(entry)
    names = [name for released in list_released() for name in (released.name, *released.aliases)]
    close = difflib.get_close_matches(str(name_or_path), names, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else \
        " (strhub.hub.list_released() and docs/released_models.md list the released names)"
    raise FileNotFoundError(f"checkpoint not found: {name_or_path} is neither a path from here nor the name of a "
                            f"released checkpoint{hint}")
