"""Helpers shared by the entry points: train.py, test.py, read.py and bench.py."""
from typing import Optional

import torch
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf

from strhub.data.utils import load_charset


def register_resolvers() -> None:
    """Lets configs write `${load_charset:PATH}`: the charset in a file (one character per line), with a relative
    PATH taken from the directory the command was started in."""
    if not OmegaConf.has_resolver("load_charset"):
        OmegaConf.register_new_resolver("load_charset", lambda path: load_charset(to_absolute_path(path)))


def default_device(device: Optional[str] = None) -> torch.device:
    """`device`, or else the GPU when there is one, or else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
