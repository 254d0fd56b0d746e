"""Where configs/ is (beside the package, for a source install), and finding its YAML files that are not Hydra
groups: test groups, dataset recipes."""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
