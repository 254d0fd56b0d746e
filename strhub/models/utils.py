"""Building the Lightning system from configs and checkpoints (inference alone needs only
`strhub.models.checkpoint`)."""
from pathlib import Path
from typing import Any, Optional, Union

import torch

from strhub.models.checkpoint import (InvalidCheckpointError, assign_weights, model_config, read_checkpoint,
                                      read_model_checkpoint, strip_prefix)
from strhub.models.clip4str.system import CLIP4STRSystem
from strhub.models.layout import return_freed_memory


def create_model(experiment: Optional[str] = None, **overrides: Any) -> CLIP4STRSystem:
    """A fresh model from an experiment config (e.g. `vl4str`, `tiny`) and keyword overrides."""
    config = model_config(experiment)
    config.update(overrides)
    return CLIP4STRSystem(**config)


def load_from_checkpoint(checkpoint_path: Union[str, Path], **overrides: Any) -> CLIP4STRSystem:
    """The Lightning system of a checkpoint (see `strhub.models.checkpoint.load_model`), with its
    hyper-parameters: for testing, or to go on training."""
    path = Path(checkpoint_path)
    state_dict, config = read_model_checkpoint(path, overrides)
    with torch.device("meta"):
        system = CLIP4STRSystem(**config)
    assign_weights(system.model, state_dict, path)
    system.to("cpu")
    return_freed_memory()
    return system


def load_weights(model: CLIP4STRSystem, checkpoint_path: Union[str, Path]) -> None:
    """Initialises every weight of `model` from a checkpoint (fine-tuning from a released file)."""
    path = Path(checkpoint_path)
    state_dict = strip_prefix(read_checkpoint(path)[0], path)
    try:
        model.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InvalidCheckpointError(f"{path} does not fit this model: {err}") from err
