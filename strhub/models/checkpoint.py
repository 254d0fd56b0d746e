"""Checkpoints of every model family, including the original's released files, read once into what builds the
model. Nothing here needs Lightning, so inference (`read.py`, the speed benchmark) runs without it.

`read_checkpoint` reads a file (or a run folder's best checkpoint) into a `Checkpoint`: the family, told by the
tensors it holds (`Family.of`), the state dict in the plain model's layout, and the full config: the
architecture read off the tensors' shapes, the other settings from the checkpoint's hyper-parameters or, for a
plain state dict, from the registered config whose shapes match (keyword overrides win). `Checkpoint.build` makes
the plain model or the Lightning system of it without a second copy of the weights.
"""
import functools
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from strhub.config import experiments, model_config
from strhub.host import return_freed_memory
from strhub.hub import resolve_checkpoint
from strhub.keys import check_keys
from strhub.models.registry import Family, plain_state_dict, without_weight_files
from strhub.models.safe_load import InvalidCheckpointError, safe_load
from strhub.models.state_dicts import merge_settings

log = logging.getLogger(__name__)

# Tensors whose shapes follow the charset and the maximum label length, not the architecture.
CHARSET_TENSORS = ("head.weight", "head.bias", "text_embed.embedding.weight", "pos_queries")
_VAL_ACCURACY = re.compile(r"val_accuracy=(\d+(?:\.\d+)?)")


def checkpoint_file(path: Union[str, Path]) -> Path:
    """The checkpoint a path names: a file as it is, a run folder's best checkpoint (see `best_checkpoint`), or a
    released checkpoint's name, its cached file (downloaded and checked the first time, see `strhub.hub`)."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        return best_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


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
        log.info("Best checkpoint by validation accuracy: %s", path)
        return path
    raise InvalidCheckpointError(f"no readable checkpoint in {folder}: {', '.join(unreadable)} cannot be read")


def read_file(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The state dict and hyper-parameters (empty for a plain state dict) of a checkpoint file, read with
    `safe_load` (PyTorch's weights-only reader)."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, Mapping):
        raise InvalidCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise InvalidCheckpointError(f"{path} has no state dict of tensors")
    return dict(state_dict), hparams


def identify(state_dict: Mapping[str, Tensor], path: Path) -> Tuple[Family, Dict[str, Tensor]]:
    """`plain_state_dict`, its refusal naming the file."""
    try:
        return plain_state_dict(state_dict)
    except ValueError as err:
        raise InvalidCheckpointError(f"{path} is {err}") from None


def architecture(state_dict: Mapping[str, Tensor]) -> FrozenSet[Tuple[str, Tuple[int, ...]]]:
    """The (key, shape) pairs of a state dict that depend on the architecture alone."""
    return frozenset((key, tuple(value.shape)) for key, value in state_dict.items()
                     if not key.endswith(CHARSET_TENSORS))


@functools.lru_cache(maxsize=None)
def experiment_architecture(experiment: str) -> Optional[FrozenSet[Tuple[str, Tuple[int, ...]]]]:
    """The architecture of an experiment config's model (built on the meta device); None for one with a
    Hugging Face text tower, which needs its folder (and whose checkpoints are never plain state dicts)."""
    config = model_config(experiment)
    if config.get("text_tower"):
        return None
    config.update(without_weight_files(config))
    with torch.device("meta"):
        return architecture(Family.of(experiment).build(config).state_dict())


def registered_settings(family: Family, state_dict: Mapping[str, Tensor], path: Path,
                        overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """For a plain state dict, the settings its tensors cannot tell (`family.unreadable`), from the
    experiment configs whose architecture it has; with none, the family's defaults (with a warning).
    Configs that match but disagree make it ambiguous: an error says which override to give."""
    shape = architecture(state_dict)
    matches = [name for name in experiments() if Family.of(name) is family and experiment_architecture(name) == shape]
    missing = [key for key in family.unreadable if key not in overrides]
    if not matches:
        defaults = family.defaults()
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


@dataclass
class Checkpoint:
    """A checkpoint read once: its file, family, the plain model's state dict (floating tensors as float32) and
    the full config of the model it describes."""

    path: Path
    family: Family
    state_dict: Dict[str, Tensor]
    config: Dict[str, Any]

    def build(self, system: bool = False) -> nn.Module:
        """The plain model (or, with `system`, the Lightning system) of the config, built on the meta device and
        given the checkpoint's tensors as its parameters (no second copy is made)."""
        try:
            with torch.device("meta"):
                built = self.family.build(self.config, system)
        except (AssertionError, ValueError, RuntimeError) as err:
            raise InvalidCheckpointError(f"{self.path}: cannot build the {self.family.name} model it describes "
                                         f"({err}); {self.settings_hint()}") from err
        model = built.model if system else built
        try:
            model.load_state_dict(self.state_dict, strict=True, assign=True)
        except RuntimeError as err:
            raise InvalidCheckpointError(f"{self.path} does not fit the model it describes: {err}; "
                                         f"{self.settings_hint()}") from err
        clip = getattr(model, "clip_model", None)
        if isinstance(getattr(clip, "attn_mask", None), Tensor):  # open_clip's causal mask is an unsaved buffer
            clip.attn_mask = torch.full(clip.attn_mask.shape, float("-inf")).triu(1)
        built.to("cpu")  # also Lightning's record of the system's device, built on the meta device
        return_freed_memory()
        return built

    def settings_hint(self) -> str:
        return (f"if it was trained with other settings than those assumed, pass them as overrides "
                f"({', '.join(f'{key}=...' for key in self.family.unreadable)})")


def read_checkpoint(path: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None,
                    system: bool = False) -> Checkpoint:
    """The checkpoint that `path` names (a file, or a run folder's best one), read once. Settings come from the
    checkpoint's hyper-parameters where it has them, else from the configs; the architecture is read off the
    tensors (what they cannot tell, such as a Hugging Face text tower's pooler, is kept), and `overrides` win over
    both. Overrides of keys the family does not take, or of the wrong type, are refused (ConfigError; `system`:
    typed as the Lightning system's settings); the checkpoint's own hyper-parameters are read as they are."""
    path = checkpoint_file(path)
    overrides = dict(overrides or {})
    state_dict, hparams = read_file(path)
    family, state_dict = identify(state_dict, path)
    check_keys(overrides, family.known_settings(system), f"setting for a {family.name} model")
    config = family.defaults()
    if hparams:
        config.update({key: value for key, value in family.legacy_fallbacks.items() if key not in hparams})
        config.update(hparams)
    else:
        config.update(registered_settings(family, state_dict, path, overrides))
    try:  # the architecture is read off tensors that a damaged checkpoint may lack
        config = merge_settings(config, family.settings_from_state_dict(state_dict, overrides.get(
            "img_size", config.get("img_size"))))
        head = "head.weight" if "head.weight" in state_dict else "visual_decoder.head.weight"
        num_classes = state_dict[head].shape[0]
    except KeyError as err:
        raise InvalidCheckpointError(f"{path} lacks the tensor {err.args[0]!r} of a {family.name} model: the file is "
                                     f"damaged or not a {family.name} checkpoint") from None
    config.update(overrides)
    if len(config["charset_train"]) != num_classes - 1:
        raise InvalidCheckpointError(
            f"{path} predicts {num_classes - 1} characters but charset_train has {len(config['charset_train'])}; "
            f"pass charset_train=<the training charset> to load it")
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return Checkpoint(path, family, state_dict, config)


def load_model(checkpoint_path: Union[str, Path], **overrides: Any) -> nn.Module:
    """The plain model of a checkpoint of any family (a Lightning `.ckpt`, ours or the original's, or a state dict
    in the original's key layout; or a run folder, its best checkpoint), for inference. No CLIP weight file is
    needed."""
    return read_checkpoint(checkpoint_path, overrides).build()
