"""LMDB scene-text datasets in the standard STR layout (`num-samples`, `image-%09d`, `label-%09d`, 1-based)."""
import io
import os
import unicodedata
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import lmdb
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, Dataset, default_collate
from tqdm import tqdm

from strhub.data.transforms import to_rgb
from strhub.keys import ConfigError
from strhub.tokenizer import CharsetAdapter

FILTER_REASONS = ("too_long", "empty", "too_small", "unreadable")
SHOWN_REMOVED = 5  # characters outside the charset named in a dataset's summary
_ENVS: Dict[Tuple[int, int], lmdb.Environment] = {}
_ENVS_PID = os.getpid()


def shared_env(root: Union[str, Path]) -> lmdb.Environment:
    """This process's environment for the LMDB at `root`, opened on first use and shared by all its readers.

    py-lmdb refuses to open the same files twice in a process, and handles must not cross a fork: a
    forked DataLoader worker closes the ones it inherited and opens its own."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    try:
        stat = (Path(root) / "data.mdb").stat()
    except OSError:
        raise FileNotFoundError(f"no LMDB at {root}: expected the file {Path(root) / 'data.mdb'}") from None
    key = (stat.st_dev, stat.st_ino)
    if key not in _ENVS:
        _ENVS[key] = lmdb.open(str(root), max_readers=1, readonly=True, create=False, readahead=False,
                               meminit=False, lock=False)
    return _ENVS[key]


def read_num_samples(txn: lmdb.Transaction, root: Union[str, Path]) -> int:
    """The record count stored under `num-samples`, with an error naming the LMDB when it is missing."""
    value = txn.get(b"num-samples")
    if value is None:
        raise KeyError(f"{root}: key 'num-samples' is missing; not an STR LMDB "
                       "(expected num-samples, image-%09d, label-%09d)")
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{root}: num-samples is {value[:20]!r}, not a record count")
    return count


def read_label(txn: lmdb.Transaction, root: Union[str, Path], index: int, total: int) -> str:
    """The label of record `index`, with an error naming the LMDB and key when it is missing (KeyError) or not
    UTF-8 (ValueError)."""
    key = f"label-{index:09d}"
    raw = txn.get(key.encode())
    if raw is None:
        raise KeyError(f"{root}: key {key!r} is missing (num-samples is {total})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{root}: {key} is not valid UTF-8 ({err})") from None


def lmdb_labels(root: Union[str, Path], progress: bool = False) -> Iterator[str]:
    """Every label of the LMDB at `root` as stored, in record order (`read_label`), with a progress bar if asked."""
    with shared_env(root).begin() as txn:
        total = read_num_samples(txn, root)
        for index in tqdm(range(1, total + 1), desc=Path(root).name, unit="label", disable=None if progress else True,
                          leave=False):
            yield read_label(txn, root, index, total)


def normalize_label(label: str, remove_whitespace: bool, normalize_unicode: bool) -> str:
    """Whitespace removal, then either NFKD folded to ASCII (the original: accents are dropped and
    non-Latin scripts vanish) or NFC composition, which keeps every script intact as written."""
    if remove_whitespace:
        label = "".join(label.split())
    if normalize_unicode:
        return unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return unicodedata.normalize("NFC", label)


def check_label_settings(charset: str, remove_whitespace: bool, normalize_unicode: bool) -> None:
    """Raises ConfigError, naming the keys, when the label normalisation removes characters of the training charset
    from every label: non-ASCII ones under NFKD-to-ASCII, whitespace when whitespace is removed."""
    problems = []
    non_ascii = [char for char in charset if not char.isascii()]
    if normalize_unicode and non_ascii:
        problems.append(f"it holds {len(non_ascii)} non-ASCII characters (e.g. {''.join(non_ascii[:5])!r}), which "
                        "normalize_unicode=true (NFKD folded to ASCII) deletes from every label: set "
                        "data.normalize_unicode=false to keep labels as written (NFC)")
    spaces = [char for char in charset if char.isspace()]
    if remove_whitespace and spaces:
        problems.append(f"it holds whitespace ({''.join(spaces)!r}), which remove_whitespace=true deletes from every "
                        "label: set data.remove_whitespace=false to keep it")
    if problems:
        raise ConfigError("the training charset cannot occur in the labels: " + "; ".join(problems))


class LmdbDataset(Dataset):
    """One LMDB of labelled word images.

    Labels are filtered at construction, in the original's order: whitespace removal, Unicode
    normalisation, length limit (before charset filtering), charset adapter, empty-label drop and an
    optional minimum image side. `filtered` counts the dropped records per reason, `num_trimmed` the
    kept labels that lost characters outside the charset and `removed` those characters.

    Items are `(image, label)`; with `unlabelled`, the label is the record number. An image that does
    not decode gives `None` with a warning naming the LMDB and record, and counts in `num_skipped`
    (`skip_corrupt_collate` drops such items from batches). Each process opens the LMDB on first use.
    """

    def __init__(self, root: Union[str, Path], charset: str, max_label_length: int, min_image_dim: int = 0,
                 remove_whitespace: bool = True, normalize_unicode: bool = True, unlabelled: bool = False,
                 transform: Optional[Callable[[Image.Image], Any]] = None) -> None:
        self.root = str(root)
        self.unlabelled = unlabelled
        self.transform = transform
        self.labels: List[str] = []
        self.indices: List[int] = []
        self.filtered: Counter = Counter()
        self.num_trimmed = 0
        self.removed: Counter = Counter()
        with shared_env(self.root).begin() as txn:
            self.total = read_num_samples(txn, self.root)
            if unlabelled:
                self.indices = list(range(1, self.total + 1))
            else:
                self._filter(txn, CharsetAdapter(charset), max_label_length, min_image_dim, remove_whitespace,
                             normalize_unicode)
        # One flag per kept record, in shared memory so that DataLoader workers can mark corrupt images.
        self._corrupt = torch.zeros(len(self.indices), dtype=torch.bool).share_memory_()

    def _filter(self, txn: lmdb.Transaction, adapter: CharsetAdapter, max_label_length: int, min_image_dim: int,
                remove_whitespace: bool, normalize_unicode: bool) -> None:
        for index in range(1, self.total + 1):
            try:
                label = normalize_label(read_label(txn, self.root, index, self.total), remove_whitespace,
                                        normalize_unicode)
            except (KeyError, ValueError) as err:  # a missing or undecodable label: this record only
                warnings.warn(f"{err.args[0]}; record skipped")
                self.filtered["unreadable"] += 1
                continue
            if len(label) > max_label_length:
                self.filtered["too_long"] += 1
                continue
            adapted = adapter(label)
            if not adapted:
                self.filtered["empty"] += 1
                continue
            if min_image_dim > 0:
                try:
                    width, height = Image.open(io.BytesIO(txn.get(f"image-{index:09d}".encode()) or b"")).size
                except Exception as err:  # noqa: BLE001 - whatever the decoder raises, the image is unusable
                    warnings.warn(f"{self.root}: image-{index:09d} is unreadable ({type(err).__name__}: {err}); "
                                  "record skipped")
                    self.filtered["unreadable"] += 1
                    continue
                if min(width, height) < min_image_dim:
                    self.filtered["too_small"] += 1
                    continue
            if len(adapted) < len(label):
                self.num_trimmed += 1
                self.removed.update(adapter.outside(label))
            self.labels.append(adapted)
            self.indices.append(index)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_skipped(self) -> int:
        """How many records were skipped so far because their image did not decode (all processes)."""
        return int(self._corrupt.sum())

    def decoded_records(self) -> List[int]:
        """The record number (`image-%09d`) of each item whose image decoded, in item order: the samples a full pass
        over the dataset gave."""
        return [index for index, corrupt in zip(self.indices, self._corrupt.tolist()) if not corrupt]

    @property
    def summary(self) -> str:
        """One line: records kept out of the total, the count per filter reason, and how many kept labels
        lost characters outside the charset (the most frequent of those characters with their counts)."""
        reasons = ", ".join(f"{reason.replace('_', ' ')}: {self.filtered[reason]}"
                            for reason in FILTER_REASONS if self.filtered[reason])
        removed = ", ".join(f"{char!r} {count}" for char, count in self.removed.most_common(SHOWN_REMOVED))
        more = f", {len(self.removed) - SHOWN_REMOVED} more" if len(self.removed) > SHOWN_REMOVED else ""
        return (f"{self.root}: {len(self)} of {self.total} records kept" + (f" (filtered {reasons})" if reasons else "")
                + (f"; {self.num_trimmed} labels lost characters outside the charset ({removed}{more})"
                   if self.num_trimmed else ""))

    def __getitem__(self, item: int) -> Optional[Tuple[Any, Union[str, int]]]:
        index = self.indices[item]
        key = f"image-{index:09d}"
        with shared_env(self.root).begin() as txn:
            buffer = txn.get(key.encode())
        try:
            if buffer is None:
                raise KeyError("key missing")
            img = Image.open(io.BytesIO(buffer))
            img.load()
            img = to_rgb(img)
        except Exception as err:  # noqa: BLE001 - whatever the decoder raises, this record cannot be used
            warnings.warn(f"{self.root}: {key} could not be decoded ({type(err).__name__}: {err}); record skipped")
            self._corrupt[item] = True
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, index if self.unlabelled else self.labels[item]


def lmdb_datasets(dataset: Dataset) -> List[LmdbDataset]:
    """The LmdbDatasets inside `dataset` (itself, or the parts of a ConcatDataset)."""
    if isinstance(dataset, LmdbDataset):
        return [dataset]
    if isinstance(dataset, ConcatDataset):
        return [part for child in dataset.datasets for part in lmdb_datasets(child)]
    return []


def find_lmdbs(root: Union[str, Path]) -> List[Path]:
    """Every directory below `root` (itself included) holding a data.mdb, sorted."""
    return sorted(mdb.parent for mdb in Path(root).glob("**/data.mdb"))


def build_tree_dataset(root: Union[str, Path], *args: Any, **kwargs: Any) -> ConcatDataset:
    """Concatenate an `LmdbDataset(dir, *args, **kwargs)` for every LMDB below `root`, in sorted order."""
    root = Path(root).absolute()
    dirs = find_lmdbs(root)
    if not dirs:
        where = "the folder does not exist" if not root.exists() else "no data.mdb at any depth"
        raise FileNotFoundError(f"no LMDB under {root} ({where})")
    datasets = [LmdbDataset(path, *args, **kwargs) for path in dirs]
    for dataset in datasets:
        rank_zero_info(f"[dataset] {dataset.summary}")
    return ConcatDataset(datasets)


def skip_corrupt_collate(batch: Sequence[Optional[Any]],
                         collate_fn: Callable[[List[Any]], Any] = default_collate) -> Optional[Any]:
    """Collate the items that decoded (the dataset gives None for the others); None if none did."""
    kept = [item for item in batch if item is not None]
    return collate_fn(kept) if kept else None
