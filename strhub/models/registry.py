"""The model families: the one seam between a name, a config, a checkpoint or a model and the code of its family.

A family (`vl4str` = CLIP4STR, `str_adapter`, `parseq`) is a package `strhub.models.<package>` whose `model` module
holds the plain `nn.Module`, its `build_model(config)` and `settings_from_state_dict(state_dict, img_size)`, and
whose `system` module holds the Lightning system. Its defaults are `configs/model/<name>.yaml`; experiments
(`configs/experiment/*.yaml`) pick a family with `override /model: <name>`. `Family.of` answers "which family is
this?" for an experiment name, a model config, a state dict (told by the tensors it holds, never by a file name),
a plain model or a Lightning system; `Family.build` is the one way a model or system is built from a config.
Importing this module imports no model code (nor Lightning).
"""
import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from strhub.config import group_choices, model_config
from strhub.keys import parameters
from strhub.models.state_dicts import sub_state_dict

STATE_DICT_PREFIXES = ("model.", "")  # our Lightning systems hold the plain model as `model`, the original's not


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

    @staticmethod
    def of(thing: Union[str, Mapping[str, Any], nn.Module]) -> "Family":
        """The family of an experiment name, a model config (by its `_target_` or name), a state dict (ours or
        the original's layout), a plain model or a Lightning system; ValueError when none fits."""
        if isinstance(thing, str):
            return get_family(group_choices(thing)["model"]) if thing else Family.of(model_config())
        if isinstance(thing, nn.Module):
            for family in FAMILIES.values():
                if type(thing).__module__ in (f"{family.package}.model", f"{family.package}.system"):
                    return family
            raise ValueError(f"{type(thing).__name__} belongs to no registered model family ({', '.join(FAMILIES)})")
        if thing and all(isinstance(value, Tensor) for value in thing.values()):
            return plain_state_dict(thing)[0]
        return _family_of_config(thing)

    def module(self, part: str) -> Any:
        return importlib.import_module(f"{self.package}.{part}")

    def system_class(self) -> Type[nn.Module]:
        """The Lightning system (importing it imports Lightning)."""
        return getattr(self.module("system"), self.system)

    def model_class(self) -> Type[nn.Module]:
        """The plain model (`nn.Module`)."""
        return getattr(self.module("model"), self.model)

    def build(self, config: Mapping[str, Any], system: bool = False) -> nn.Module:
        """The plain model (or, with `system`, the Lightning system) of a model config, with random weights or
        those its `clip_pretrained` names. Keys starting with `_` (Hydra's) are left out."""
        settings = {key: value for key, value in config.items() if not key.startswith("_")}
        return self.system_class()(**settings) if system else self.module("model").build_model(settings)

    def defaults(self) -> Dict[str, Any]:
        """The model section of the family's own config (configs/model/<name>.yaml with main.yaml's defaults)."""
        return model_config(model=self.name)

    def known_settings(self, system: bool = False) -> Dict[str, Any]:
        """The settings a model of the family takes (the keys of its config), each with the type that the
        constructor of its plain model declares, or of its Lightning system with `system` (which imports
        Lightning, and types the training settings too); `Any` where it declares none."""
        annotations = parameters(self.system_class() if system else self.model_class())
        return {key: annotations.get(key, Any) for key in sorted(self.defaults())}

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


def get_family(name: str) -> Family:
    """The family `name`, or an error that lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _family_of_config(config: Mapping[str, Any]) -> Family:
    target = str(config.get("_target_", ""))
    for family in FAMILIES.values():
        if target == f"{family.package}.system.{family.system}":
            return family
    for family in FAMILIES.values():
        if str(config.get("name", "")).startswith(family.name):
            return family
    raise ValueError(f"model config {config.get('name')!r} belongs to no known family ({', '.join(FAMILIES)})")


def plain_state_dict(state_dict: Mapping[str, Tensor]) -> Tuple[Family, Dict[str, Tensor]]:
    """The family of a checkpoint's state dict, and the state dict in the plain model's layout (ours is under
    `model.`, the original's at the top); ValueError when no family's tensors are there."""
    for prefix in STATE_DICT_PREFIXES:
        stripped = sub_state_dict(state_dict, prefix)
        for family in FAMILIES.values():
            if family.matches(stripped):
                return family, stripped
    sample = ", ".join(list(state_dict)[:5])
    raise ValueError(f"not a checkpoint of a known model family ({', '.join(FAMILIES)}): none of their tensors are "
                     f"there (its keys start with: {sample})")


def without_weight_files(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The overrides that build a config's model with random weights: no CLIP weight file to read."""
    return {"clip_pretrained": None} if "clip_pretrained" in config else {}


def build_random(experiment: Optional[str] = None, system: bool = False, **overrides: Any) -> nn.Module:
    """An experiment's plain model (or Lightning system) with random weights: no weight file is read."""
    config = model_config(experiment)
    config.update(without_weight_files(config), **overrides)
    return Family.of(config).build(config, system)
