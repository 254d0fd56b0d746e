"""The catalogue of released checkpoints: `released.yaml` beside this module (or the YAML file that `STRHUB_CATALOGUE`
names, in the same format), read into `Released` entries. Imports nothing from strhub but the key check."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from strhub.keys import ConfigError, check_keys

CATALOGUE = Path(__file__).with_name("released.yaml")
CATALOGUE_ENV = "STRHUB_CATALOGUE"
DIGESTS = ("sha256", "sha1", "md5")


@dataclass(frozen=True)
class Released:
    """One released checkpoint (see released.yaml for what each field holds)."""

    name: str
    family: str
    experiment: str
    title: str
    file: str
    hash: Optional[str] = None
    digests: Tuple[str, ...] = ("sha256",)
    urls: Tuple[str, ...] = ()
    pages: Tuple[str, ...] = ()
    aliases: Tuple[str, ...] = ()
    default: bool = False

    @property
    def names(self) -> Tuple[str, ...]:
        """Every name that finds this entry: its name, aliases, file name and the file name's stem."""
        return (self.name, *self.aliases, self.file, Path(self.file).stem)


FIELDS: Dict[str, Any] = {"name": str, "family": str, "experiment": str, "title": str, "file": str,
                          "hash": Optional[str], "digests": list, "urls": list, "pages": list, "aliases": list,
                          "default": bool}


def catalogue_path() -> Path:
    """The catalogue in use: `STRHUB_CATALOGUE` when set, else the package's."""
    return Path(os.environ[CATALOGUE_ENV]) if os.environ.get(CATALOGUE_ENV) else CATALOGUE


def _entry(record: Any, path: Path, index: int) -> Released:
    where = f"{path}, entry {index + 1}"
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(FIELDS)}, got {record!r}")
    check_keys(record, FIELDS, f"field in {where}")
    missing = [key for key in ("name", "family", "experiment", "title", "file") if key not in record]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    digests = tuple(record.get("digests") or ("sha256",))
    unknown = [name for name in digests if name not in DIGESTS]
    if unknown:
        raise ConfigError(f"{where}: digests {', '.join(unknown)} unknown (known: {', '.join(DIGESTS)})")
    hash_ = record.get("hash")
    if hash_ is not None and (not hash_ or any(c not in "0123456789abcdef" for c in hash_)):
        raise ConfigError(f"{where}: hash must be lowercase hex digits, got {hash_!r}")
    return Released(**{**record, "digests": digests, **{key: tuple(record.get(key) or ()) for key in
                                                       ("urls", "pages", "aliases")}})


def load_catalogue(path: Optional[Path] = None) -> List[Released]:
    """The entries of a catalogue file (default: `catalogue_path()`); a malformed one gets a ConfigError naming it."""
    path = catalogue_path() if path is None else Path(path)
    try:
        records = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the checkpoint catalogue {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"the checkpoint catalogue {path} is not valid YAML: {err}") from err
    if not isinstance(records, list):
        raise ConfigError(f"the checkpoint catalogue {path} must be a list of entries")
    entries = [_entry(record, path, index) for index, record in enumerate(records)]
    seen: Dict[str, str] = {}
    for entry in entries:
        for name in set(entry.names):
            if seen.setdefault(name, entry.name) != entry.name:
                raise ConfigError(f"{path}: the name {name!r} is given to both {seen[name]} and {entry.name}")
    return entries


def list_released() -> List[Released]:
    """Every released checkpoint of the catalogue in use, in its order."""
    return load_catalogue()


def find_released(name: str) -> Optional[Released]:
    """The entry that `name` (a name, alias, file name or its stem) finds, or None."""
    return next((entry for entry in load_catalogue() if name in entry.names), None)
