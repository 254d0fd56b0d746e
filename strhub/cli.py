"""Helpers shared by the entry points: train.py, test.py, read.py and the benchmarks."""
import contextlib
import ctypes
from typing import Any, Dict, Iterable, Optional, Union

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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def reuse_freed_memory() -> None:
    """Has glibc's malloc keep freed blocks of up to 32 MiB for reuse rather than hand them back to
    the system, so that each forward pass does not page-fault its activations in afresh (about 5%
    of CPU inference time). The peak memory is unchanged; a no-op where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)


def autocast_context(device: Union[str, torch.device], precision: str = "32") -> contextlib.AbstractContextManager:
    """Autocast for inference at `precision` ('32', 'bf16' or '16') on `device`."""
    dtypes = {"bf16": torch.bfloat16, "16": torch.float16}
    if precision == "32":
        return contextlib.nullcontext()
    if precision not in dtypes:
        raise ValueError(f"precision must be one of 32, bf16, 16; got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=dtypes[precision])


def parse_model_args(args: Iterable[str]) -> Dict[str, Any]:
    """Model overrides written as `name:type=value` (type: int, float, str or bool)."""
    casts = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() == "true"}
    kwargs = {}
    for arg in args:
        try:
            name, value = arg.split("=", 1)
            name, type_name = name.split(":")
            kwargs[name] = casts[type_name](value)
        except (ValueError, KeyError):
            raise ValueError(f"model override {arg!r} is not of the form name:type=value "
                             f"with type in {sorted(casts)}") from None
    return kwargs
