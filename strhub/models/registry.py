"""The model families and their configs: name → config → builder.

A family (`vl4str` = CLIP4STR, `str_adapter`, `parseq`) is a package `strhub.models.<package>` whose
`model` module holds the plain `nn.Module`, its `build_model(config)` and
`settings_from_state_dict(state_dict, img_size)`, and whose `system` module holds the Lightning
system. Its defaults are `configs/model/<name>.yaml`; experiments (`configs/experiment/*.yaml`) pick a
family with `override /model: <name>`. Checkpoints are told apart by the tensors they hold, never by
their file name. Importing this module imports no model code (nor Lightning).
"""
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from omegaconf import OmegaConf
from torch import Tensor, nn

from strhub.configs import CONFIG_DIR
from strhub.keys import parameters



@dataclass(frozen=True)
class Family:
    """A model family: its config name, package, Lightning system and plain model, the state-dict keys only its
    checkpoints hold, the settings its tensors cannot tell (taken from the registered config whose
    shapes match), and the values its original code falls back on for keys a checkpoint's
    hyper-parameters lack."""

    name: str
    package: str
    system: str
    model: str
    signature: Tuple[str, ...]
    unreadable: Tuple[str, ...]
    legacy_fallbacks: Mapping[str, Any] = field(default_factory=dict)

    def module(self, part: str) -> Any:
        return importlib.import_module(f"{self.package}.{part}")

    def build_model(self, config: Mapping[str, Any]) -> nn.Module:
        """The plain model of `config` (random weights, or those `clip_pretrained` names)."""
        return self.module("model").build_model(config)

    def system_class(self) -> Type[nn.Module]:
        """The Lightning system (importing it imports Lightning)."""
        return getattr(self.module("system"), self.system)

    def model_class(self) -> Type[nn.Module]:
        """The plain model (`nn.Module`)."""
        return getattr(self.module("model"), self.model)

    def settings_from_state_dict(self, state_dict: Mapping[str, Tensor],
                                 img_size: Optional[Sequence[int]]) -> Dict[str, Any]:
        """The settings the tensors of a state dict (in the model's own layout) tell."""
        return self.module("model").settings_from_state_dict(state_dict, img_size)

    def matches(self, state_dict: Mapping[str, Tensor]) -> bool:
        return all(key in state_dict for key in self.signature)


FAMILIES: Dict[str, Family] = {family.name: family for family in (
    Family("vl4str", "strhub.models.clip4str", "CLIP4STRSystem", "CLIP4STR",
           signature=("clip_model.visual.proj", "visual_decoder.head.weight"), unreadable=("dec_num_heads",),
           # The original's in-code values for keys that its older checkpoints' hyper-parameters lack.
           legacy_fallbacks={"use_language_model": False, "context_length": 20, "text_freeze_nlayer": -1,
                             "coef_lr": 1.0}),
    Family("str_adapter", "strhub.models.str_adapter", "STRAdapterSystem", "STRAdapter",
           signature=("clip_model.visual.proj", "decoder.norm.weight", "head.weight"),
           unreadable=("dec_num_heads", "block_ids"),
           legacy_fallbacks={"adapter_type": "linear", "block_ids": [0, 4, 8, 11], "prune_reduction": 4,
                             "coef_lr": 1.0, "coef_wd": 1.0}),
    Family("parseq", "strhub.models.parseq", "PARSeqSystem", "PARSeq",
           signature=("encoder.patch_embed.proj.weight", "decoder.norm.weight", "head.weight"),
           unreadable=("enc_num_heads", "dec_num_heads", "img_size")),
)}


def without_weight_files(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The overrides that build a config's model with random weights: no CLIP weight file to read."""
    return {"clip_pretrained": None} if "clip_pretrained" in config else {}


def get_family(name: str) -> Family:
    """The family `name`, or an error that lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def experiments(config_dir: Path = CONFIG_DIR) -> List[str]:
    """The names of the experiment configs."""
    return sorted(path.stem for path in (config_dir / "experiment").glob("*.yaml"))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found; install strhub from its source tree (pip install -e .) "
                                "so that configs/ sits beside the package")
    return OmegaConf.load(path)


def _group_choices(config: Any, prefix: str = "") -> Dict[str, str]:
    """`{group: option}` of a config's defaults list (`- model: x`, or `- override /model: x` with a prefix)."""
    choices = {}
    for entry in config.get("defaults", []):
        if not isinstance(entry, str):
            for key, value in entry.items():
                if key.startswith(prefix):
                    choices[key[len(prefix):]] = value
    return choices


def model_config(experiment: Optional[str] = None, model: Optional[str] = None,
                 config_dir: Path = CONFIG_DIR) -> Dict[str, Any]:
    """The `model` section as Hydra composes it for `train.py +experiment=<experiment>`, resolved to plain
    data: `main.yaml`, the default charset, the model config (the experiment's, or `model`, or the
    default) and the experiment's overrides."""
    main = _load(config_dir / "main.yaml")
    choices = _group_choices(main)
    parts = []
    if experiment:
        if experiment not in experiments(config_dir):
            raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(experiments(config_dir))}")
        experiment_config = _load(config_dir / "experiment" / f"{experiment}.yaml")
        choices.update(_group_choices(experiment_config, prefix="override /"))
        parts.append(experiment_config)
    if model:
        choices["model"] = model
    parts = [OmegaConf.create({"model": main.model}), _load(config_dir / "charset" / f"{choices['charset']}.yaml"),
             OmegaConf.create({"model": _load(config_dir / "model" / f"{choices['model']}.yaml")}), *parts]
    config = OmegaConf.to_container(OmegaConf.merge(*parts).model, resolve=True)
    return {key: value for key, value in config.items() if not key.startswith("_")}


def family_of(config: Mapping[str, Any]) -> Family:
    """The family a model config belongs to, by its system (`_target_` of configs/model/*.yaml) or its name."""
    target = str(config.get("_target_", ""))
    for family in FAMILIES.values():
        if target == f"{family.package}.system.{family.system}":
            return family
    for family in FAMILIES.values():
        if str(config.get("name", "")).startswith(family.name):
            return family
    raise ValueError(f"model config {config.get('name')!r} belongs to no known family ({', '.join(FAMILIES)})")


@functools.lru_cache(maxsize=None)
def experiment_family(experiment: Optional[str] = None) -> Family:
    """The family of an experiment config (without one, of main.yaml's default model)."""
    choices = _group_choices(_load(CONFIG_DIR / "main.yaml"))
    if experiment:
        choices.update(_group_choices(_load(CONFIG_DIR / "experiment" / f"{experiment}.yaml"), prefix="override /"))
    return family_of(OmegaConf.to_container(_load(CONFIG_DIR / "model" / f"{choices['model']}.yaml")))


def known_settings(family: Family, system: bool = False) -> Dict[str, Any]:
    """The settings a model of `family` takes (the keys of its config), each with the type that the constructor
    of its plain model declares, or of its Lightning system with `system` (which imports Lightning, and types
    the training settings too); `Any` where it declares none."""
    annotations = parameters(family.system_class() if system else family.model_class())
    return {key: annotations.get(key, Any) for key in sorted(model_config(model=family.name))}
