"""Lightning data module over the STR directory layout: `root/train/<train_dir>`, `root/val`, `root/test/<name>`."""
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, default_collate

from strhub.data.dataset import (
    LmdbDataset,
    build_tree_dataset,
    check_label_settings,
    lmdb_datasets,
    skip_corrupt_collate,
)
from strhub.data.transforms import OPENAI_MEAN, OPENAI_STD, get_transform


class SceneTextDataModule(pl.LightningDataModule):
    """Datasets and loaders for training, validation and the test benchmarks.

    Training reads every LMDB below `root_dir/train/<train_dir>` with `charset_train` (an error if the
    label normalisation would delete some of its characters from every label); validation every LMDB
    below `root_dir/val` and test `root_dir/test/<name>`, both with `charset_test`.
    Training and validation normalise with the OpenAI CLIP mean/std when `openai_meanstd`, test with
    0.5/0.5 unless `test_openai_meanstd` (the original's test protocol). Images that do not decode are
    dropped from their batch (a batch with none left is None, which Lightning skips in training).
    """

    # The original's API: `SceneTextDataModule.get_transform(img_size, augment=False, rotation=0)`.
    get_transform = staticmethod(get_transform)

    def __init__(self, root_dir: str, train_dir: str, img_size: Sequence[int], max_label_length: int,
                 charset_train: str, charset_test: str, batch_size: int, num_workers: int, augment: bool,
                 remove_whitespace: bool = True, normalize_unicode: bool = True, min_image_dim: int = 0,
                 rotation: int = 0, collate_fn: Optional[Callable] = None, openai_meanstd: bool = True,
                 test_openai_meanstd: bool = False) -> None:
        super().__init__()
        self.root_dir = Path(root_dir)
        self.train_dir = train_dir
        self.img_size = tuple(img_size)
        self.max_label_length = max_label_length
        self.charset_train = charset_train
        self.charset_test = charset_test
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.remove_whitespace = remove_whitespace
        self.normalize_unicode = normalize_unicode
        self.min_image_dim = min_image_dim
        self.rotation = rotation
        self.collate_fn = partial(skip_corrupt_collate, collate_fn=collate_fn or default_collate)
        self.mean, self.std = (OPENAI_MEAN, OPENAI_STD) if openai_meanstd else (0.5, 0.5)
        self.test_mean, self.test_std = (OPENAI_MEAN, OPENAI_STD) if test_openai_meanstd else (0.5, 0.5)
        self._train_dataset: Optional[Dataset] = None
        self._val_dataset: Optional[Dataset] = None
        rank_zero_info(f"[dataset] train/val mean {self.mean}, std {self.std}; "
                       f"test mean {self.test_mean}, std {self.test_std}")

    def _tree(self, split: str, root: Path, charset: str, transform: Callable) -> Dataset:
        try:
            dataset = build_tree_dataset(root, charset, self.max_label_length, self.min_image_dim,
                                         self.remove_whitespace, self.normalize_unicode, transform=transform)
        except FileNotFoundError as err:
            train_root = self.root_dir / "train"
            train_dirs = sorted(p.name for p in train_root.iterdir() if p.is_dir()) if train_root.is_dir() else []
            raise FileNotFoundError(
                f"{split} data not found: {err}. Expected the layout <root_dir>/train/<train_dir>/**/data.mdb, "
                f"<root_dir>/val/**/data.mdb, <root_dir>/test/<name>/data.mdb with root_dir={self.root_dir} and "
                f"train_dir={self.train_dir} (train dirs present: {train_dirs or 'none'})") from None
        rank_zero_info(f"[dataset] {split}: {len(dataset)} samples")
        return dataset

    @property
    def train_dataset(self) -> Dataset:
        if self._train_dataset is None:
            check_label_settings(self.charset_train, self.remove_whitespace, self.normalize_unicode)
            transform = get_transform(self.img_size, self.augment, mean=self.mean, std=self.std)
            self._train_dataset = self._tree("training", self.root_dir / "train" / self.train_dir, self.charset_train,
                                             transform)
        return self._train_dataset

    @property
    def val_dataset(self) -> Dataset:
        if self._val_dataset is None:
            transform = get_transform(self.img_size, mean=self.mean, std=self.std)
            self._val_dataset = self._tree("validation", self.root_dir / "val", self.charset_test, transform)
        return self._val_dataset

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          collate_fn=self.collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def split_test_names(self, names: Sequence[str]) -> Tuple[List[str], List[str]]:
        """`names` split into those with an LMDB at `root_dir/test/<name>` and the missing ones."""
        present = [name for name in names if (self.root_dir / "test" / name / "data.mdb").is_file()]
        return present, [name for name in names if name not in present]

    def test_dataloaders(self, names: Sequence[str]) -> Dict[str, DataLoader]:
        """A loader per test set `root_dir/test/<name>`, in the order given (no shuffling)."""
        missing = self.split_test_names(names)[1]
        if missing:
            test_root = self.root_dir / "test"
            found = sorted(p.name for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []
            raise FileNotFoundError(f"test sets {missing} not found: expected {test_root}/<name>/data.mdb "
                                    f"(sets there: {found or 'none'})")
        transform = get_transform(self.img_size, rotation=self.rotation, mean=self.test_mean, std=self.test_std)
        loaders = {}
        for name in names:
            dataset = LmdbDataset(self.root_dir / "test" / name, self.charset_test, self.max_label_length,
                                  self.min_image_dim, self.remove_whitespace, self.normalize_unicode,
                                  transform=transform)
            rank_zero_info(f"[dataset] test {name}: {dataset.summary}")
            loaders[name] = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                       pin_memory=torch.cuda.is_available(), collate_fn=self.collate_fn)
        return loaders

    def teardown(self, stage: str) -> None:
        """Report the records skipped because their image did not decode."""
        for split, dataset in (("training", self._train_dataset), ("validation", self._val_dataset)):
            for part in lmdb_datasets(dataset) if dataset is not None else []:
                if part.num_skipped:
                    rank_zero_warn(f"[dataset] {split}: {part.num_skipped} undecodable records skipped in {part.root}")
