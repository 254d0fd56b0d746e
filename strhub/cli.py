"""Helpers shared by the entry points: train.py, test.py, read.py and the benchmarks."""
import argparse
import contextlib
import ctypes
import glob
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from hydra.utils import get_class, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from strhub.configs import CONFIG_DIR
from strhub.data.utils import load_charset
from strhub.keys import ConfigError, check_keys, parameters, unknown_keys


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def worker_count(at_most: int) -> int:
    """Data-loading worker processes: `at_most`, and no more than the usable CPUs (more would only compete with
    the main process, and PyTorch warns about them)."""
    return max(0, min(at_most, usable_cpus()))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def register_resolvers() -> None:
    """Lets configs write `${load_charset:PATH}`, the charset in a file (one character per line, a relative PATH
    taken from the directory the command was started in), and `${workers:N}`, `worker_count(N)`."""
    if not OmegaConf.has_resolver("load_charset"):
        OmegaConf.register_new_resolver("load_charset", lambda path: load_charset(to_absolute_path(path)))
    if not OmegaConf.has_resolver("workers"):
        OmegaConf.register_new_resolver("workers", lambda at_most: worker_count(int(at_most)))


def world_size(trainer: Mapping[str, Any]) -> int:
    """Number of training processes of a `trainer` config: devices per node (resolved as Lightning does) times nodes."""
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        uses_gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if uses_gpu else 1
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    else:
        per_node = int(devices)
    return per_node * int(trainer.get("num_nodes", 1))


def default_device(device: Optional[str] = None) -> torch.device:
    """`device`, or else the GPU when there is one, or else the CPU. A device torch cannot name, or a CUDA device
    where torch sees no such GPU, is a ConfigError of one line."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not a torch device: {err}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                          f"False); use the cpu device")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    return chosen


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


BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _bool(value: str) -> bool:
    """The usual spellings of a boolean, in any case; ValueError for anything else."""
    if value.strip().lower() not in BOOLEANS:
        raise ValueError(value)
    return BOOLEANS[value.strip().lower()]


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for an integer option of at least `minimum`: anything else is refused with one line that
    names the option (`argument --batch_size: must be an integer of at least 1, got '0'`)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {minimum}, got {value!r}")
        return number

    return parse


def parse_model_args(args: Iterable[str]) -> Dict[str, Any]:
    """Model overrides written as `name:type=value` (type: int, float, str, bool, or list of ints written
    `[1,3,5]`, such as `block_ids:list=[1,3,5]`; a bool is true/false, 1/0, yes/no or on/off); ConfigError for
    another form."""
    casts = {"int": int, "float": float, "str": str, "bool": _bool, "list": _int_list}
    kwargs = {}
    for arg in args:
        try:
            name, value = arg.split("=", 1)
            name, type_name = name.split(":")
            kwargs[name] = casts[type_name](value)
        except (ValueError, KeyError):
            raise ConfigError(f"model override {arg!r} is not of the form name:type=value with type in "
                              f"{sorted(casts)} (a bool is one of {'/'.join(BOOLEANS)})") from None
    return kwargs


def random_clip_notice(model: Mapping[str, Any]) -> Optional[Tuple[int, str]]:
    """The log level and line that announce a CLIP with random weights: for the model config of a CLIP family
    with `clip_pretrained: null`, else None. A named architecture (ViT-B-16, ...) has released weights, so
    starting it from random ones is a WARNING that says how to give them; a shape of one's own (the `tiny` and
    `*-mini` experiments) has none, so a plain note says it is meant."""
    if "clip_pretrained" not in model or model["clip_pretrained"] is not None:
        return None
    arch = model.get("clip_arch")
    if isinstance(arch, str):
        return logging.WARNING, (
            f"model.clip_pretrained is null: the {arch} CLIP of {model.get('name')} starts from RANDOM weights, so "
            f"it trains without the pre-training CLIP4STR is built on and will read little. Give CLIP weights with "
            f"model.clip_pretrained=FILE (an OpenAI .pt or OpenCLIP .bin of {arch}), or use an experiment that "
            f"names them, e.g. +experiment=vl4str with ViT-B-16.pt in $CLIP_DIR (default pretrained/clip; see the "
            f"README, Data)")
    return logging.INFO, (
        f"Note: {model.get('name')} has a CLIP of its own shape (clip_arch) and clip_pretrained null, so its CLIP "
        f"starts from random weights, as the small experiments mean it to; no released CLIP has this shape")


# Keys that a section's target takes through **kwargs on purpose.
SECTION_EXTRAS = {"model": ("name",)}


def check_sections(config: Mapping[str, Any], sections: Sequence[str] = ("model", "data", "trainer")) -> None:
    """Refuses (ConfigError) the keys of each config section built from a `_target_` that the target does not
    take, with the closest names it does, and values of the wrong type, before anything is built. `config` is
    plain resolved data; keys starting with `_` are Hydra's."""
    for section in sections:
        values = config.get(section)
        if not isinstance(values, Mapping) or "_target_" not in values:
            continue
        target = get_class(values["_target_"])
        given = {key: value for key, value in values.items() if not key.startswith("_")}
        check_keys(given, parameters(target, *SECTION_EXTRAS.get(section, ())),
                   f"{section} key ({target.__name__} takes no such parameter)", prefix=f"{section}.")


CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")


def compose_leaving_out_missing(config_name: str, typed: Mapping[str, str]) -> Tuple[DictConfig, Dict[str, str]]:
    """The config composed with the overrides `typed` (key: override as typed) but those of keys it lacks, and
    those keys (each with the typed key that reached it), or ConfigCompositionException for another failure."""
    missing: Dict[str, str] = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        while True:
            kept = [line for key, line in typed.items() if key not in missing.values()]
            try:
                return compose(config_name, overrides=kept), missing
            except ConfigCompositionException as err:
                key = getattr(err.__cause__, "full_key", None)
                culprit = next((typed_key for typed_key in typed if typed_key not in missing.values()
                                and (typed_key == key or typed_key.startswith(f"{key}."))), None)
                if not isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)) or culprit is None:
                    raise
                missing[key] = culprit


def sweep_jobs(overrides: Sequence[str]) -> List[List[str]]:
    """The overrides of each job of a Hydra sweep (`+experiment=tiny,parseq-mini` gives two), one job without
    sweeps; HydraException for a sweep it cannot list (an interval)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices = [[f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
               if override.is_sweep_override() else [override.input_line] for override in parsed]
    return [list(job) for job in itertools.product(*choices)]


def check_overrides(config_name: str, overrides: Sequence[str]) -> None:
    """Refuses (ConfigError), before Hydra starts, the overrides of keys that the config `config_name` lacks, with
    the closest names it has: a key Hydra would refuse without a hint (`model.refine_iter=2`, `modle.lr=1`), or
    one `+key=value` adds at the top level, where nothing reads it (`+seeed=0`; `+experiment=...` adds a config
    group). Then the composed sections are checked against what builds them (`check_sections`): `+model.lrr=1`.
    A sweep (`-m`) has each of its jobs checked. Other mistakes are left to Hydra's own messages."""
    if any(arg.split("=")[0] in CONFIG_FLAGS for arg in overrides):
        return  # another config than `config_name`
    try:
        jobs = sweep_jobs([arg for arg in overrides if not arg.startswith("-")])
    except HydraException:
        return
    for job in jobs:
        check_job(config_name, job)


def check_job(config_name: str, overrides: Sequence[str]) -> None:
    """`check_overrides` for the overrides of one job (no sweeps)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    for override in parsed:  # Hydra fails on these with a traceback
        group = CONFIG_DIR / override.key_or_group
        if group.is_dir() and override.package is None and not isinstance(override.value(), (str, type(None))):
            names = sorted(path.stem for path in group.glob("*.yaml"))
            raise ConfigError(f"{override.input_line}: {override.key_or_group} is a config group: give one of its "
                              f"names ({', '.join(names)})")
    try:
        typed = {override.key_or_group: override.input_line for override in parsed}
        config, missing = compose_leaving_out_missing(config_name, typed)
    except HydraException:
        return
    errors = []
    for key, culprit in missing.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if target is not None and leaf in parameters(get_class(target)):
            errors.append(f"{key} is not in the config; add it with +{typed[culprit]}")
        else:
            known = list(node) if isinstance(node, DictConfig) else []
            errors.append(f"unknown key: {', '.join(unknown_keys([leaf], known, f'{parent}.' if parent else ''))}")
    added = [override.key_or_group for override in parsed if override.is_add() and override.package is None
             and "." not in override.key_or_group and override.key_or_group != "hydra"
             and not (CONFIG_DIR / override.key_or_group).is_dir()]
    if added:
        known = [key for key in config if key not in added]
        errors.append(f"unknown top-level key: {', '.join(unknown_keys(added, known))}")
    if errors:
        raise ConfigError("; ".join(errors))
    try:
        resolved = OmegaConf.to_container(config, resolve=True)
    except (OmegaConfBaseException, OSError, ValueError):
        return  # a value that cannot be resolved yet (a missing charset file): train.py names it
    check_sections(resolved)


def check_command_line(config_name: str) -> None:
    """`check_overrides` on this process's command line: a refusal ends the process with one line on stderr."""
    try:
        check_overrides(config_name, sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {err}")
