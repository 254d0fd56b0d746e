"""The configs: where they are, and the model section of an experiment as Hydra composes it.

`configs/` at the top of the source tree is where users edit them; an installed wheel carries the same files as
package data (`strhub/configs`). The entry points compose whole configs with Hydra (`hydra.main`, and
`compose` for checking overrides); library code that needs only the `model` section of an experiment reads it with
`model_config`, which merges the same files the same way without starting Hydra (tests hold the two equal for
every experiment)."""
import functools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from strhub.host import worker_count
from strhub.tokenizer import load_charset


def _config_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[1] / "configs"
    return source_tree if (source_tree / "main.yaml").is_file() else Path(__file__).resolve().parent / "configs"


CONFIG_DIR = _config_dir()


def config_file(folder: str, name: str) -> Path:
    """`name` itself when it is a YAML file, else `configs/<folder>/<name>.yaml`; an error lists the known names."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / folder / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml"))
    raise FileNotFoundError(f"{name!r} is neither a YAML file nor one of the {folder} in {CONFIG_DIR / folder}: "
                            f"{', '.join(known) or 'none'}")


def register_resolvers() -> None:
    """Lets configs write `${load_charset:PATH}`, the charset in a file (one character per line, a relative PATH
    taken from the directory the command was started in), and `${workers:N}`, `worker_count(N)`."""
    if not OmegaConf.has_resolver("load_charset"):
        OmegaConf.register_new_resolver("load_charset", lambda path: load_charset(str(Path(path).absolute())))
    if not OmegaConf.has_resolver("workers"):
        OmegaConf.register_new_resolver("workers", lambda at_most: worker_count(int(at_most)))


def compose(config_name: str = "main", overrides: Sequence[str] = ()) -> DictConfig:
    """The whole config `config_name` with command-line `overrides`, composed by Hydra (unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def experiments() -> List[str]:
    """The names of the experiment configs."""
    return sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found: the configs travel with the strhub package (configs/ in "
                                f"its source tree); reinstall it")
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


@functools.lru_cache(maxsize=None)
def group_choices(experiment: Optional[str] = None) -> Dict[str, str]:
    """The options of main.yaml's config groups (model, charset, dataset) that `+experiment=<experiment>` picks."""
    choices = _group_choices(_load(CONFIG_DIR / "main.yaml"))
    if experiment:
        if experiment not in experiments():
            raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(experiments())}")
        choices.update(_group_choices(_load(CONFIG_DIR / "experiment" / f"{experiment}.yaml"), prefix="override /"))
    return choices


def model_config(experiment: Optional[str] = None, model: Optional[str] = None) -> Dict[str, Any]:
    """The `model` section as Hydra composes it for `train.py +experiment=<experiment>`, resolved to plain
    data: `main.yaml`, the default charset, the model config (the experiment's, or `model`, or the
    default) and the experiment's overrides."""
    choices = dict(group_choices(experiment))
    if model:
        choices["model"] = model
    parts = [OmegaConf.create({"model": _load(CONFIG_DIR / "main.yaml").model}),
             _load(CONFIG_DIR / "charset" / f"{choices['charset']}.yaml"),
             OmegaConf.create({"model": _load(CONFIG_DIR / "model" / f"{choices['model']}.yaml")})]
    if experiment:
        parts.append(_load(CONFIG_DIR / "experiment" / f"{experiment}.yaml"))
    register_resolvers()
    config = OmegaConf.to_container(OmegaConf.merge(*parts).model, resolve=True)
    return {key: value for key, value in config.items() if not key.startswith("_")}
