"""Test groups: the tables test.py prints, each a list of test sets, defined in configs/test_groups/<name>.yaml or
in any YAML file of the same shape:

    groups:
      - name: Union14M-Benchmark       # the table's title ("<name> set:"), unique within a selection
        datasets:                      # the rows: folders below <data_root>/test, as a list ...
          Curve: Union14M-Benchmarks/curve   # ... or as `row label: folder`
        max_label_length: 255          # optional: the label length filter of these sets (default: the model's)
        average: true                  # optional: an `Average` row, the unweighted mean of the rows

A selection is the protocol's groups (`clip4str`, the original's tables, by default; or `parseq`), then `new`
with --new, then the extra group files asked for (union14m, ost, ltb, a user's file).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from strhub.config import config_file

DEFAULT_PROTOCOL = "clip4str"


class GroupError(ValueError):
    """A group file that cannot be used, or groups that contradict each other."""


@dataclass(frozen=True)
class BenchmarkGroup:
    """A table: its rows as `(label, folder below test/)`, the length filter of its sets (None: the model's
    max_label_length) and whether it ends with an unweighted `Average` row."""

    name: str
    datasets: Tuple[Tuple[str, str], ...]
    max_label_length: Optional[int] = None
    average: bool = False

    @property
    def folders(self) -> List[str]:
        return [folder for _, folder in self.datasets]


def load_groups(name: str) -> List[BenchmarkGroup]:
    """The groups of configs/test_groups/<name>.yaml, or of the YAML file `name`."""
    try:
        path = config_file("test_groups", name)
    except FileNotFoundError as err:
        raise GroupError(str(err)) from None
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), list):
        raise GroupError(f"{path}: expected `groups:` holding a list of {{name, datasets}}")
    groups = []
    for number, group in enumerate(raw["groups"]):
        where = f"{path}: groups[{number}]"
        if not isinstance(group, dict) or not group.get("name") or not group.get("datasets"):
            raise GroupError(f"{where} needs a name and datasets")
        unknown = set(group) - {"name", "datasets", "max_label_length", "average"}
        if unknown:
            raise GroupError(f"{where} ({group['name']}): unknown keys {', '.join(sorted(unknown))}")
        datasets = group["datasets"]
        rows = list(datasets.items()) if isinstance(datasets, dict) else [(folder, folder) for folder in datasets]
        if not all(isinstance(label, str) and isinstance(folder, str) for label, folder in rows):
            raise GroupError(f"{where} ({group['name']}): datasets are folder names, or `label: folder`")
        length = group.get("max_label_length")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise GroupError(f"{where} ({group['name']}): max_label_length must be a positive integer")
        groups.append(BenchmarkGroup(str(group["name"]), tuple(rows), length, bool(group.get("average", False))))
    return groups


def select_groups(protocol: str = DEFAULT_PROTOCOL, new: bool = False, extra: Sequence[str] = (),
                  datasets: Sequence[str] = ()) -> Tuple[str, List[BenchmarkGroup]]:
    """The name of a selection (it names the report files) and its groups. Named `datasets` replace the groups
    by one `Test` group (as test.py's --datasets always did; --new does not add to it)."""
    if datasets:
        if extra or protocol != DEFAULT_PROTOCOL:
            raise GroupError("--datasets evaluates the named sets alone; it cannot be combined with groups")
        return "datasets_" + "+".join(name.replace("/", "-") for name in datasets), \
            [BenchmarkGroup("Test", tuple((name, name) for name in datasets))]
    names = [protocol, *(["new"] if new else []), *extra]
    groups: Dict[str, BenchmarkGroup] = {}
    for name in names:
        for group in load_groups(name):
            if groups.setdefault(group.name, group) != group:
                raise GroupError(f"two different groups are named {group.name!r} in {', '.join(names)}")
    label = f"new{new}" if protocol == DEFAULT_PROTOCOL and not extra else "+".join(Path(n).stem for n in names)
    return label, list(groups.values())


def label_lengths(groups: Sequence[BenchmarkGroup], default: int) -> Dict[str, int]:
    """The label length filter of every test set of the groups; a set that two groups filter differently is an
    error."""
    lengths: Dict[str, int] = {}
    for group in groups:
        for folder in group.folders:
            length = group.max_label_length or default
            if lengths.setdefault(folder, length) != length:
                raise GroupError(f"test set {folder} is in groups with max_label_length {lengths[folder]} and "
                                 f"{length} ({group.name}); evaluate them separately")
    return lengths
