"""Checkpoints of every model family, including the original's released files, read into the plain
model. Nothing here needs Lightning, so inference (`read.py`, the speed benchmark) runs without it.

The family is told by the tensors a checkpoint holds (`strhub.models.registry`), the architecture is
read off their shapes, and the other settings come from the checkpoint's hyper-parameters or, for a
plain state dict, from the registered config whose shapes match (keyword overrides win).
"""
import functools
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from strhub.hub import resolve_checkpoint
from strhub.keys import check_keys
from strhub.models.layout import return_freed_memory
from strhub.models.registry import (FAMILIES, Family, experiment_family, experiments, known_settings, model_config,
                                    without_weight_files)
from strhub.models.safe_load import InvalidCheckpointError, safe_load
from strhub.models.state_dicts import merge_settings, sub_state_dict

log = logging.getLogger(__name__)

PREFIXES = ("model.", "")  # our Lightning systems hold the plain model as `model`, the original's not always
# Tensors whose shapes follow the charset and the maximum label length, not the architecture.
CHARSET_TENSORS = ("head.weight", "head.bias", "text_embed.embedding.weight", "pos_queries")


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The state dict and hyper-parameters (empty for a plain state dict) of a checkpoint file, read with
    `safe_load` (PyTorch's weights-only reader)."""
    path = Path(path)
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, Mapping):
        raise InvalidCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise InvalidCheckpointError(f"{path} has no state dict of tensors")
    return dict(state_dict), hparams


def identify(state_dict: Mapping[str, Tensor], path: Path) -> Tuple[Family, Dict[str, Tensor]]:
    """The family of a checkpoint's state dict, and the state dict in the plain model's layout
    (ours is under `model.`, the original's at the top)."""
    for prefix in PREFIXES:
        stripped = sub_state_dict(state_dict, prefix)
        for family in FAMILIES.values():
            if family.matches(stripped):
                return family, stripped
    sample = ", ".join(list(state_dict)[:5])
    raise InvalidCheckpointError(f"{path} is not a checkpoint of a known model family ({', '.join(FAMILIES)}): "
                                 f"none of their tensors are there (its keys start with: {sample})")


def architecture(state_dict: Mapping[str, Tensor]) -> FrozenSet[Tuple[str, Tuple[int, ...]]]:
    """The (key, shape) pairs of a state dict that depend on the architecture alone."""
    return frozenset((key, tuple(value.shape)) for key, value in state_dict.items() if not key.endswith(CHARSET_TENSORS))


@functools.lru_cache(maxsize=None)
def experiment_architecture(experiment: str) -> Optional[FrozenSet[Tuple[str, Tuple[int, ...]]]]:
    """The architecture of an experiment config's model (built on the meta device); None for one with a
    Hugging Face text tower, which needs its folder (and whose checkpoints are never plain state dicts)."""
    config = model_config(experiment)
    if config.get("text_tower"):
        return None
    config.update(without_weight_files(config))
    with torch.device("meta"):
        return architecture(experiment_family(experiment).build_model(config).state_dict())


def registered_settings(family: Family, state_dict: Mapping[str, Tensor], path: Path,
                        overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """For a plain state dict, the settings its tensors cannot tell (`family.unreadable`), from the
    experiment configs whose architecture it has; with none, the family's defaults (with a warning).
    Configs that match but disagree make it ambiguous: an error says which override to give."""
    shape = architecture(state_dict)
    matches = [name for name in experiments() if experiment_family(name) is family
               and experiment_architecture(name) == shape]
    missing = [key for key in family.unreadable if key not in overrides]
    if not matches:
        defaults = model_config(model=family.name)
        if missing:
            warnings.warn(f"{path}: a {family.name} state dict that matches no experiment config; assuming "
                          f"{', '.join(f'{key}={defaults[key]!r}' for key in missing)} (pass them as overrides "
                          f"if it was trained with other values)", stacklevel=3)
        return {}
    configs = {name: model_config(name) for name in matches}
    settings = {"name": configs[matches[0]]["name"]}
    for key in family.unreadable:
        values = {name: config[key] for name, config in configs.items()}
        if key in missing and len({repr(value) for value in values.values()}) > 1:
            choices = ", ".join(f"{name}: {key}={value!r}" for name, value in values.items())
            raise InvalidCheckpointError(f"{path}: its tensors fit several configs that differ in {key} ({choices}); "
                                         f"pass {key}=<value>")
        settings[key] = values[matches[0]]
    return settings


def read_model_checkpoint(path: Path, overrides: Mapping[str, Any],
                          system: bool = False) -> Tuple[Family, Dict[str, Tensor], Dict[str, Any]]:
    """The family, the model's state dict (floating tensors as float32) and its full config: settings
    come from the checkpoint's hyper-parameters where it has them, else from the configs; the
    architecture is read off the tensors (what they cannot tell, such as a Hugging Face text tower's pooler,
    is kept), and `overrides` win over both. Overrides of keys the family does not take, or of the wrong
    type, are refused (ConfigError; `system`: typed as the Lightning system's settings, see
    `known_settings`); the checkpoint's own hyper-parameters are read as they are."""
    state_dict, hparams = read_checkpoint(path)
    family, state_dict = identify(state_dict, path)
    check_keys(overrides, known_settings(family, system), f"setting for a {family.name} model")
    config = model_config(model=family.name)
    if hparams:
        config.update({key: value for key, value in family.legacy_fallbacks.items() if key not in hparams})
        config.update(hparams)
    else:
        config.update(registered_settings(family, state_dict, path, overrides))
    config = merge_settings(config, family.settings_from_state_dict(state_dict, overrides.get("img_size",
                                                                                             config.get("img_size"))))
    config.update(overrides)
    num_classes = state_dict["head.weight" if "head.weight" in state_dict else "visual_decoder.head.weight"].shape[0]
    if len(config["charset_train"]) != num_classes - 1:
        raise InvalidCheckpointError(
            f"{path} predicts {num_classes - 1} characters but charset_train has {len(config['charset_train'])}; "
            f"pass charset_train=<the training charset> to load it")
    return family, {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, config


def build_on_meta(build: Any, config: Mapping[str, Any], family: Family, path: Path) -> nn.Module:
    """`build(config)` on the meta device (no weights are allocated until the checkpoint's are assigned)."""
    try:
        with torch.device("meta"):
            return build(config)
    except (AssertionError, ValueError, RuntimeError) as err:
        raise InvalidCheckpointError(f"{path}: cannot build the {family.name} model it describes ({err}); "
                                     f"{_settings_hint(family)}") from err


def _settings_hint(family: Family) -> str:
    return (f"if it was trained with other settings than those assumed, pass them as overrides "
            f"({', '.join(f'{key}=...' for key in family.unreadable)})")


def assign_weights(model: nn.Module, state_dict: Mapping[str, Tensor], family: Family, path: Path) -> None:
    """Makes the checkpoint's tensors the parameters of `model` (built on the meta device: no
    second copy is ever made)."""
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise InvalidCheckpointError(f"{path} does not fit the model it describes: {err}; "
                                     f"{_settings_hint(family)}") from err
    clip = getattr(model, "clip_model", None)
    if isinstance(getattr(clip, "attn_mask", None), Tensor):  # open_clip's causal mask is an unsaved buffer
        clip.attn_mask = torch.full(clip.attn_mask.shape, float("-inf")).triu(1)
    model.to("cpu")
    return_freed_memory()


def load_model(checkpoint_path: Union[str, Path], **overrides: Any) -> nn.Module:
    """The plain model of a checkpoint of any family (a Lightning `.ckpt`, ours or the original's, or
    a state dict in the original's key layout), or a released checkpoint's name (`strhub.hub`), for inference. No
    CLIP weight file is needed."""
    path = resolve_checkpoint(checkpoint_path)
    family, state_dict, config = read_model_checkpoint(path, overrides)
    model = build_on_meta(family.build_model, config, family, path)
    assign_weights(model, state_dict, family, path)
    return model


_VAL_ACCURACY = re.compile(r"val_accuracy=(\d+(?:\.\d+)?)")


def best_checkpoint(folder: Path) -> Path:
    """The readable checkpoint with the highest `val_accuracy=` in its name, in `folder` or `folder/checkpoints`
    (the first in name order on ties). Unreadable ones (a write cut short) are skipped with a warning naming them."""
    candidates = sorted(folder.glob("*.ckpt")) + sorted(folder.glob("checkpoints/*.ckpt"))
    scored = [(float(m.group(1)), path) for path in candidates if (m := _VAL_ACCURACY.search(path.name))]
    if not scored:
        raise FileNotFoundError(f"no checkpoint named with val_accuracy=... in {folder} or {folder / 'checkpoints'}")
    unreadable = []
    for _, path in sorted(scored, key=lambda item: -item[0]):
        try:
            safe_load(path, mmap=True)
        except InvalidCheckpointError as err:
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            unreadable.append(path.name)
            continue
        return path
    raise InvalidCheckpointError(f"no readable checkpoint in {folder}: {', '.join(unreadable)} cannot be read")


def checkpoint_file(name_or_path: Union[str, Path]) -> Path:
    """The checkpoint file a user names: a file as it is, a run folder's best checkpoint, or a released
    checkpoint's cached file (downloaded the first time, see `strhub.hub`)."""
    path = resolve_checkpoint(name_or_path)
    return best_checkpoint(path) if path.is_dir() else path
