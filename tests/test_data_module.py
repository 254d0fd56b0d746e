"""SceneTextDataModule: benchmark names, directory layout, loaders, normalisation per stage, and the
36-character protocol counts on a sample of the real benchmarks."""
import io
import pickle
import warnings
from pathlib import Path
from typing import Sequence

import pytest
import torch
from conftest import REAL_COUNTS
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

from strhub.data.augment import rand_augment_transform
from strhub.data.dataset import lmdb_datasets
from strhub.data.module import OPENAI_MEAN, OPENAI_STD, SceneTextDataModule
from strhub.evaluation.groups import load_groups
from strhub.tokenizer import CHARSET_36, CHARSET_94
from strhub.tools.create_lmdb import write_lmdb


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def make_lmdb(path: Path, labels: Sequence[str]) -> None:
    write_lmdb(path, [(encode(Image.new("RGB", (40, 16), (200, 10, 10))), label) for label in labels])


def module(root: Path, **kwargs) -> SceneTextDataModule:
    settings = dict(root_dir=str(root), train_dir="real", img_size=(32, 128), max_label_length=25,
                    charset_train=CHARSET_94, charset_test=CHARSET_36, batch_size=4, num_workers=0, augment=True)
    return SceneTextDataModule(**{**settings, **kwargs})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_lmdb(tmp_path / "train" / "real" / "B", ["Bee!", "Cat"])
    make_lmdb(tmp_path / "train" / "real" / "A" / "sub", ["Ant", "Dog.", "Elk"])
    make_lmdb(tmp_path / "train" / "synth", ["Zzz"])
    make_lmdb(tmp_path / "val" / "IC13", ["Val", "One"])
    make_lmdb(tmp_path / "test" / "IIIT5k", ["Hello!", "World"])
    return tmp_path


def test_benchmark_groups_are_the_originals():
    benchmark = ["IIIT5k", "SVT", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80", "HOST", "WOST"]
    subset, full = load_groups("clip4str")
    assert (subset.name, subset.folders) == ("Benchmark (Subset)", benchmark)
    assert (full.name, full.folders) == ("Benchmark", benchmark)
    assert [(g.name, g.folders) for g in load_groups("new")] == [("New", ["ArT", "COCOv1.4", "Uber"])]


def test_train_reads_every_lmdb_below_train_dir_with_the_train_charset(tree):
    dm = module(tree)
    parts = lmdb_datasets(dm.train_dataset)
    assert [Path(p.root).relative_to(tree).as_posix() for p in parts] == ["train/real/A/sub", "train/real/B"]
    assert [dm.train_dataset[i][1] for i in range(5)] == ["Ant", "Dog.", "Elk", "Bee!", "Cat"]
    assert dm.train_dataset[0][0].shape == (3, 32, 128)
    assert any(isinstance(t, type(rand_augment_transform())) for t in parts[0].transform.transforms)



def test_training_in_another_script_keeps_labels_as_written(tmp_path):
    make_lmdb(tmp_path / "train" / "real", ["北京", "Tiếng Việt", "Café!"])
    charset = "北京TiếngVệtCafé "
    with pytest.raises(ValueError, match="data.normalize_unicode=false"):
        module(tmp_path, charset_train=charset.replace(" ", "")).train_dataset
    with pytest.raises(ValueError, match="data.remove_whitespace=false"):
        module(tmp_path, charset_train=charset, normalize_unicode=False).train_dataset
    dm = module(tmp_path, charset_train=charset, normalize_unicode=False, remove_whitespace=False)
    assert lmdb_datasets(dm.train_dataset)[0].labels == ["北京", "Tiếng Việt", "Café"]

def test_val_uses_the_test_charset_without_augmentation(tree):
    dm = module(tree)
    assert [dm.val_dataset[i][1] for i in range(2)] == ["val", "one"]
    transforms = lmdb_datasets(dm.val_dataset)[0].transform.transforms
    assert not any(isinstance(t, type(rand_augment_transform())) for t in transforms)


def test_normalisation_per_stage(tree):
    white = Image.new("RGB", (20, 10), "white")
    openai = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    dm = module(tree, augment=False)
    assert torch.allclose(lmdb_datasets(dm.train_dataset)[0].transform(white)[:, 0, 0], openai)
    assert torch.allclose(lmdb_datasets(dm.val_dataset)[0].transform(white)[:, 0, 0], openai)
    assert torch.all(dm.test_dataloaders(["IIIT5k"])["IIIT5k"].dataset.transform(white) == 1)
    test_openai = module(tree, test_openai_meanstd=True).test_dataloaders(["IIIT5k"])["IIIT5k"].dataset
    assert torch.allclose(test_openai.transform(white)[:, 0, 0], openai)
    half = module(tree, openai_meanstd=False, augment=False)
    assert torch.all(lmdb_datasets(half.train_dataset)[0].transform(white) == 1)


def test_loader_settings(tree):
    dm = module(tree, num_workers=2)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert train.persistent_workers and val.persistent_workers
    assert train.pin_memory == torch.cuda.is_available()
    test = dm.test_dataloaders(["IIIT5k"])["IIIT5k"]
    assert isinstance(test.sampler, SequentialSampler) and test.batch_size == 4
    assert not module(tree).train_dataloader().persistent_workers


def test_batches_are_images_and_labels(tree):
    images, labels = next(iter(module(tree).train_dataloader()))
    assert images.shape == (4, 3, 32, 128) and images.dtype == torch.float32
    assert len(labels) == 4 and all(isinstance(label, str) for label in labels)


def test_augmented_loader_is_deterministic_under_a_seed_with_workers(tree):
    dm = module(tree, num_workers=2, batch_size=2)

    def epoch(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.cat([images for images, _ in dm.train_dataloader()])

    assert torch.equal(epoch(3), epoch(3))
    assert not torch.equal(epoch(3), epoch(4))


def test_datasets_pickle_for_spawned_workers(tree):
    dm = module(tree)
    _ = dm.train_dataset[0]  # the environment is open in this process: it must not travel
    clone = pickle.loads(pickle.dumps(dm.train_dataset))
    assert [clone[i][1] for i in range(5)] == [dm.train_dataset[i][1] for i in range(5)]
    assert clone[0][0].shape == (3, 32, 128)


def test_missing_splits_name_the_expected_layout(tmp_path):
    make_lmdb(tmp_path / "train" / "synth", ["a"])
    dm = module(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"training data not found: no LMDB under .*train/real .*"
                                                r"<root_dir>/train/<train_dir>/\*\*/data\.mdb.*train dirs present: "
                                                r"\['synth'\]"):
        _ = dm.train_dataset
    with pytest.raises(FileNotFoundError, match=r"validation data not found: no LMDB under .*val"):
        _ = dm.val_dataset


def test_test_sets_split_into_present_and_missing(tree):
    dm = module(tree)
    assert dm.split_test_names(["SVT", "IIIT5k", "CUTE80"]) == (["IIIT5k"], ["SVT", "CUTE80"])
    with pytest.raises(FileNotFoundError, match=r"test sets \['SVT'\] not found: expected .*test/<name>/data\.mdb "
                                                r"\(sets there: \['IIIT5k'\]\)"):
        dm.test_dataloaders(["IIIT5k", "SVT"])
    loaders = dm.test_dataloaders(["IIIT5k"])
    images, labels = next(iter(loaders["IIIT5k"]))
    assert list(labels) == ["hello", "world"] and images.shape == (2, 3, 32, 128)


def test_corrupt_records_are_skipped_and_reported(tmp_path):
    jpeg = encode(Image.new("RGB", (30, 10)), "JPEG")
    write_lmdb(tmp_path / "val" / "x", [(jpeg, "good"), (b"\x89PNG broken", "bad"), (jpeg, "fine")])
    dm = module(tmp_path, batch_size=8)
    with pytest.warns(UserWarning, match=r"val/x: image-000000002 could not be decoded"):
        images, labels = next(iter(dm.val_dataloader()))
    assert list(labels) == ["good", "fine"] and images.shape[0] == 2
    with pytest.warns(UserWarning, match=r"validation: 1 undecodable records skipped in .*val/x"):
        dm.teardown("validate")


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_benchmarks_under_the_36_character_protocol(name, real_root):
    dm = module(real_root, img_size=(224, 224), batch_size=16)
    loader = dm.test_dataloaders([name])[name]
    assert len(loader.dataset) == REAL_COUNTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every image of the real sets decodes
        images, labels = next(iter(loader))
    assert images.shape == (16, 3, 224, 224) and images.min() >= -1 and images.max() <= 1
    assert all(label and set(label) <= set(CHARSET_36) for label in labels)
