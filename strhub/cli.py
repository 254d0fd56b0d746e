"""Helpers shared by the entry points: train.py, test.py, read.py and the benchmarks."""
import collections.abc
import contextlib
import ctypes
import difflib
import glob
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf

from strhub.data.utils import load_charset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def register_resolvers() -> None:
    """Lets configs write `${load_charset:PATH}`: the charset in a file (one character per line), with a relative
    PATH taken from the directory the command was started in."""
    if not OmegaConf.has_resolver("load_charset"):
        OmegaConf.register_new_resolver("load_charset", lambda path: load_charset(to_absolute_path(path)))


def world_size(trainer: Mapping[str, Any]) -> int:
    """Number of training processes of a `trainer` config: devices per node (resolved as Lightning does) times nodes."""
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        uses_gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if uses_gpu else 1
    elif isinstance(devices, collections.abc.Sequence) and not isinstance(devices, str):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    else:
        per_node = int(devices)
    return per_node * int(trainer.get("num_nodes", 1))


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


def list_images(inputs: List[str]) -> Iterator[Tuple[str, Path]]:
    """(printed name, path) of every image: folders recursively in name order, then files and globs as given."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif any(char in item for char in "*?["):
            yield from ((match, Path(match)) for match in sorted(glob.glob(item, recursive=True)))
        else:
            yield item, path


def _int_list(value: str) -> List[int]:
    return [int(item) for item in value.strip("[]").split(",") if item.strip()]


def parse_model_args(args: Iterable[str]) -> Dict[str, Any]:
    """Model overrides written as `name:type=value` (type: int, float, str, bool, or list of ints written
    `[1,3,5]`, such as `block_ids:list=[1,3,5]`)."""
    casts = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() == "true", "list": _int_list}
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


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names its key."""


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` (plain config data) fits a parameter annotation; annotations it cannot judge fit anything."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(item, args[0]) for item in value if args)
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, Mapping)
    return True


def check_arguments(section: str, values: Mapping[str, Any], target: Callable, ignore: Iterable[str] = ()) -> List[str]:
    """Checks the keys of config `section` against the parameters of `target` before anything is built: raises
    ConfigError, naming the key, for a value of the wrong type, and returns a warning for each key that `target`
    does not name (with the closest names it does). Keys starting with `_` and those in `ignore` are skipped."""
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    parameters = [name for name, parameter in inspect.signature(target).parameters.items()
                  if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    unknown = []
    for key, value in values.items():
        if key.startswith("_") or key in ignore:
            continue
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            unknown.append(f"{section}.{key} is not a parameter of {target.__name__} and has no effect{hint}")
        elif key in hints and not _fits(value, hints[key]):
            hint = hints[key]
            expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise ConfigError(f"{section}.{key} must be {expected}, got {value!r} ({type(value).__name__})")
    return unknown
