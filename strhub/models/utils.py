"""Building the Lightning systems from configs and checkpoints (inference alone needs only
`strhub.models.checkpoint`)."""
from pathlib import Path
from typing import Any, Optional, Union

from strhub.models.base import PLMSystem
from strhub.models.checkpoint import (InvalidCheckpointError, assign_weights, build_on_meta, identify, read_checkpoint,
                                      read_model_checkpoint)
from strhub.hub import resolve_checkpoint
from strhub.keys import check_keys
from strhub.models.registry import FAMILIES, experiment_family, known_settings, model_config


def create_model(experiment: Optional[str] = None, **overrides: Any) -> PLMSystem:
    """A fresh system from an experiment config (e.g. `vl4str`, `tiny`, `parseq`, `str_adapter-mini`)
    and keyword overrides (random CLIP weights when `clip_pretrained=None`)."""
    config = model_config(experiment)
    family = experiment_family(experiment)
    types = known_settings(family, system=True)
    check_keys(overrides, {key: types.get(key, Any) for key in config},
               f"setting of experiment {experiment or 'default'!r}")
    config.update(overrides)
    return family.system_class()(**config)


def load_from_checkpoint(checkpoint_path: Union[str, Path], **overrides: Any) -> PLMSystem:
    """The Lightning system of a checkpoint of any family (see `strhub.models.checkpoint.load_model`),
    with its hyper-parameters: for testing, or to go on training. A released checkpoint's name works too."""
    path = resolve_checkpoint(checkpoint_path)
    family, state_dict, config = read_model_checkpoint(path, overrides, system=True)
    system = build_on_meta(lambda settings: family.system_class()(**settings), config, family, path)
    assign_weights(system.model, state_dict, family, path)
    return system.to("cpu")  # Lightning's device of the system, built on the meta device


def load_weights(system: PLMSystem, checkpoint_path: Union[str, Path]) -> None:
    """Initialises every weight of `system` from a checkpoint of its family (fine-tuning from a
    released file, by path or name)."""
    path = resolve_checkpoint(checkpoint_path)
    family, state_dict = identify(read_checkpoint(path)[0], path)
    expected = next(f for f in FAMILIES.values() if isinstance(system, f.system_class()))
    if family is not expected:
        raise InvalidCheckpointError(f"{path} is a {family.name} checkpoint; the model being trained is {expected.name}")
    try:
        system.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InvalidCheckpointError(f"{path} does not fit this model: {err}") from err
