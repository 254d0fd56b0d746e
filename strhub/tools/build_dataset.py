"""Assemble a dataset root (train/<dir>/, val/, test/<name>/) from converted LMDBs by a YAML recipe, check that
no test image is also a training or validation image, and print the record count of every set.

A recipe (a name in configs/recipes: real, rbu; or a YAML file) reads:

    description: what the dataset is
    base: real            # optional: a recipe whose sets this one extends
    sets:
      train/real:         # a folder of OUTPUT
        ArT: ArT/train    # OUTPUT/train/real/ArT from SOURCES/ArT/train (every LMDB at any depth below it)
        TextOCR:          # no source given: SOURCES/TextOCR
      val: ...
      test: ...

Each LMDB of the output is a folder holding a symbolic link `data.mdb` to its source's, so nothing is copied and
the data module's LMDB search finds it (--link copy or hardlink instead). The output is assembled in a hidden
folder beside its place and moved there when complete. A missing source is an error (--allow-missing: a warning).

The overlap check hashes every image below OUTPUT/test (SHA-1 of the encoded bytes; with --pixels also of the
decoded RGB pixels, which finds losslessly re-encoded copies) and looks up every image of the other sets; each
overlap is printed with both sets and keys, and the command then exits with status 1.
"""
import argparse
import hashlib
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from strhub.config import config_file
from strhub.host import atomic_directory
from strhub.tools.common import HelpFormatter
from strhub.tools.create_lmdb import count_records, read_records

LINKS = ("symlink", "hardlink", "copy")
Recipe = Dict[str, Dict[str, str]]  # output folder -> {set name: source path}


def load_recipe(name: str, seen: Optional[Set[Path]] = None) -> Tuple[str, Recipe]:
    """A recipe's description and sets, those of its `base` (recursively) first."""
    path = config_file("recipes", name).resolve()
    seen = set() if seen is None else seen
    if path in seen:
        raise ValueError(f"recipe {path} extends itself through its bases")
    seen.add(path)
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("sets"), dict):
        raise ValueError(f"{path}: a recipe is a mapping with `sets: {{folder: {{name: source}}}}`")
    description, sets = load_recipe(raw["base"], seen) if raw.get("base") else ("", {})
    for folder, entries in raw["sets"].items():
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: sets.{folder} must map set names to sources")
        sets.setdefault(folder, {}).update({set_name: source or set_name for set_name, source in entries.items()})
    return raw.get("description", description), sets


def plan(sets: Recipe, sources: Path) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """`(LMDB folder of the output, source LMDB folder)` for every LMDB the recipe takes, in the recipe's order,
    and the entries whose source holds none."""
    from strhub.data.dataset import find_lmdbs

    links: Dict[Path, Path] = {}
    missing = []
    for folder, entries in sets.items():
        for set_name, source in entries.items():
            root = Path(sources) / source
            found = find_lmdbs(root) if root.is_dir() else []
            if not found:
                missing.append(f"{folder}/{set_name} (no data.mdb below {root})")
            for lmdb_dir in found:
                target = Path(folder) / set_name / lmdb_dir.relative_to(root)
                if target in links:
                    raise ValueError(f"two sources go to {target}: {links[target]} and {lmdb_dir}")
                links[target] = lmdb_dir
    return list(links.items()), missing


def assemble(links: List[Tuple[Path, Path]], output: Path, link: str = "symlink", overwrite: bool = False) -> None:
    """Make each output LMDB folder with its data.mdb linked or copied from its source."""
    with atomic_directory(output, overwrite) as partial:
        for target, source in tqdm(links, desc="linking" if link != "copy" else "copying", unit="lmdb"):
            (partial / target).mkdir(parents=True)
            source_file, target_file = (source / "data.mdb").resolve(), partial / target / "data.mdb"
            if link == "symlink":
                target_file.symlink_to(source_file)
            elif link == "hardlink":
                os.link(source_file, target_file)
            else:
                shutil.copyfile(source_file, target_file)


@dataclass(frozen=True)
class Overlap:
    """An image of a training or validation set that is also in a test set."""

    kind: str  # "bytes" or "pixels"
    train_set: str
    train_key: str
    train_name: Optional[str]
    test_set: str
    test_key: str
    test_name: Optional[str]

    def __str__(self) -> str:
        def where(lmdb: str, key: str, name: Optional[str]) -> str:
            return f"{lmdb} {key}" + (f" ({name})" if name else "")

        return (f"{where(self.train_set, self.train_key, self.train_name)} = "
                f"{where(self.test_set, self.test_key, self.test_name)} [same {self.kind}]")


def image_hashes(image: bytes, pixels: bool) -> Iterator[Tuple[str, bytes]]:
    """The SHA-1 of the encoded bytes and, with `pixels`, of the decoded RGB pixels (when the image decodes)."""
    yield "bytes", hashlib.sha1(image).digest()
    if pixels:
        try:
            with Image.open(io.BytesIO(image)) as img:
                rgb = img.convert("RGB")
        except Exception:  # noqa: BLE001 - an undecodable image has no pixels to compare
            return
        yield "pixels", hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).digest()


def find_overlaps(root: Path, pixels: bool = False) -> List[Overlap]:
    """Every image of an LMDB below `root` outside `root/test` that is also in an LMDB below `root/test`."""
    from strhub.data.dataset import find_lmdbs

    root = Path(root)
    lmdbs = [(path, path.relative_to(root).as_posix()) for path in find_lmdbs(root)]
    tests = [(path, name) for path, name in lmdbs if name.split("/")[0] == "test"]
    index: Dict[Tuple[str, bytes], List[Tuple[str, str, Optional[str]]]] = {}
    for path, name in tests:
        for number, image, _, record_name in tqdm(read_records(path), desc=f"hashing {name}",
                                                  total=count_records(path), unit="image"):
            for kind, digest in image_hashes(image, pixels):
                index.setdefault((kind, digest), []).append((name, f"image-{number:09d}", record_name))
    overlaps = []
    for path, name in lmdbs:
        if (path, name) in tests:
            continue
        for number, image, _, record_name in tqdm(read_records(path), desc=f"checking {name}",
                                                  total=count_records(path), unit="image"):
            for kind, digest in image_hashes(image, pixels):
                hits = index.get((kind, digest), [])
                overlaps += [Overlap(kind, name, f"image-{number:09d}", record_name, *hit) for hit in hits]
                if hits:
                    break  # the same bytes: the pixel hash would only repeat them
    return overlaps


def count_table(root: Path, targets: List[Path]) -> str:
    """The record count of every LMDB, and the total of each top folder (train/real, val, test)."""
    counts = {target: count_records(Path(root) / target) for target in targets}
    totals: Dict[str, int] = {}
    for target, count in counts.items():
        top = "/".join(target.parts[:2]) if target.parts[0] == "train" else target.parts[0]
        totals[top] = totals.get(top, 0) + count
    width = max(len(str(t)) for t in [*counts, *totals, "set"])
    lines = [f"{'set':<{width}}  {'records':>10}"] + [f"{str(target):<{width}}  {count:>10}"
                                                     for target, count in counts.items()]
    lines += [f"{'-' * width}  {'-' * 10}"] + [f"{top:<{width}}  {count:>10}" for top, count in totals.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("recipe", help="recipe name in configs/recipes (real, rbu) or a YAML file")
    parser.add_argument("sources", type=Path, help="folder the recipe's sources are relative to")
    parser.add_argument("output", type=Path, help="dataset root to create")
    parser.add_argument("--link", choices=LINKS, default="symlink", help="how each data.mdb gets into the output")
    parser.add_argument("--allow-missing", action="store_true", help="warn about missing sources instead of failing")
    parser.add_argument("--pixels", action="store_true", help="also compare decoded pixels (slower)")
    parser.add_argument("--no-check", action="store_true", help="skip the overlap check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        description, sets = load_recipe(args.recipe)
        links, missing = plan(sets, args.sources)
        if missing and not args.allow_missing:
            raise FileNotFoundError("sources missing (pass --allow-missing to build without them): "
                                    + "; ".join(missing))
        if not links:
            raise FileNotFoundError(f"none of the recipe's sources is below {args.sources}")
        for entry in missing:
            print(f"warning: source missing, skipped: {entry}", file=sys.stderr)
        assemble(links, args.output, args.link, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))
    if description:
        print(description)
    print(count_table(args.output, [target for target, _ in links]))
    if args.no_check:
        return
    overlaps = find_overlaps(args.output, args.pixels)
    for overlap in overlaps:
        print(f"overlap: {overlap}")
    if overlaps:
        print(f"{len(overlaps)} training/validation images are also test images; the tree is built, drop them "
              "with strhub-filter-lmdb --drop-keys", file=sys.stderr)
        sys.exit(1)
    print("overlap check: no test image is in a training or validation set")


if __name__ == "__main__":
    main()
