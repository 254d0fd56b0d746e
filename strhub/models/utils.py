"""The Lightning systems of experiment configs and checkpoints (inference alone needs only
`strhub.models.checkpoint`). `create_model` and `load_from_checkpoint` keep the original's names."""
from pathlib import Path
from typing import Any, Optional, Union

from strhub.config import model_config
from strhub.keys import check_keys
from strhub.models.base import PLMSystem
from strhub.models.checkpoint import InvalidCheckpointError, identify, read_checkpoint, read_file
from strhub.models.registry import Family


def create_model(experiment: Optional[str] = None, **overrides: Any) -> PLMSystem:
    """A fresh system from an experiment config (e.g. `vl4str`, `tiny`, `parseq`, `str_adapter-mini`)
    and keyword overrides (random CLIP weights when `clip_pretrained=None`)."""
    config = model_config(experiment)
    family = Family.of(experiment or "")
    types = family.known_settings(system=True)
    check_keys(overrides, {key: types.get(key, Any) for key in config},
               f"setting of experiment {experiment or 'default'!r}")
    config.update(overrides)
    return family.build(config, system=True)


def load_from_checkpoint(checkpoint_path: Union[str, Path], **overrides: Any) -> PLMSystem:
    """The Lightning system of a checkpoint of any family (see `strhub.models.checkpoint.read_checkpoint`),
    with its hyper-parameters: for testing, or to go on training."""
    return read_checkpoint(checkpoint_path, overrides, system=True).build(system=True)


def load_weights(system: PLMSystem, checkpoint_path: Union[str, Path]) -> None:
    """Initialises every weight of `system` from a checkpoint of its family (fine-tuning from a
    released file)."""
    path = Path(checkpoint_path)
    family, state_dict = identify(read_file(path)[0], path)
    expected = Family.of(system)
    if family is not expected:
        raise InvalidCheckpointError(f"{path} is a {family.name} checkpoint; the model being trained is "
                                     f"{expected.name}")
    try:
        system.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise InvalidCheckpointError(f"{path} does not fit this model: {err}") from err
