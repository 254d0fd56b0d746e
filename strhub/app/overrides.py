"""The check of a Hydra command line before Hydra starts (train.py, bench.py): a key the config lacks is refused
with the closest names it has, and each composed section is checked against what builds it."""
import itertools
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from strhub.config import CONFIG_DIR, compose
from strhub.keys import ConfigError, check_keys, parameters, unknown_keys

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
    while True:
        kept = [line for key, line in typed.items() if key not in missing.values()]
        try:
            return compose(config_name, kept), missing
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
        value = override.value()
        chosen = value if isinstance(value, list) else [value]  # a list picks several (logger=[tensorboard,mlflow])
        if group.is_dir() and override.package is None and value is not None and not (
                chosen and all(isinstance(item, str) for item in chosen)):
            names = sorted(path.stem for path in group.glob("*.yaml"))
            raise ConfigError(f"{override.input_line}: {override.key_or_group} is a config group: give one of its "
                              f"names ({', '.join(names)}), or a list of them")
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
