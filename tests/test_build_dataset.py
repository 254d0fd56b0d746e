"""build_dataset: a recipe (with a base) assembles train/val/test from converted LMDBs, the counts per set, the
overlap check on images planted in both a training and a test set, and the shipped Real and RBU recipes."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from strhub.data.module import SceneTextDataModule
from strhub.tokenizer import CHARSET_36, CHARSET_94
from strhub.tools import build_dataset
from strhub.tools.create_lmdb import write_lmdb


def png(seed: int, compress_level: int = 6) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """Converted sets; test/IIIT5k record 2 is also ArT/train record 3 (same bytes) and, re-encoded with the same
    pixels, SynthX record 1."""
    root = tmp_path / "converted"
    write_lmdb(root / "ArT" / "train" / "a", [(png(1), "one", "gt_1:1"), (png(2), "two"), (png(10), "planted")])
    write_lmdb(root / "ArT" / "train" / "b", [(png(3), "three")])
    write_lmdb(root / "SynthX", [(png(10, compress_level=1), "reencoded")])
    write_lmdb(root / "IIIT5k" / "val", [(png(4), "val")])
    write_lmdb(root / "IIIT5k" / "test", [(png(5), "test"), (png(10), "planted", "IMG/2.jpg")])
    return root


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text("description: the base\nsets:\n  train/real:\n    ArT: ArT/train\n"
                                        "  val:\n    IIIT5k: IIIT5k/val\n  test:\n    IIIT5k: IIIT5k/test\n")
    path = tmp_path / "mine.yaml"
    path.write_text(f"base: {tmp_path / 'base.yaml'}\nsets:\n  train/real:\n    SynthX:\n")
    return path


def test_recipe_builds_the_tree_and_the_check_finds_planted_images(sources, recipe, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_dataset.main([str(recipe), str(sources), str(tmp_path / "data"), "--pixels"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "2 training/validation images are also test images" in err
    assert out.startswith("the base\n")
    table = [line.split() for line in out.split("overlap:")[0].splitlines()[1:] if not line.startswith("-")]
    assert table == [["set", "records"], ["train/real/ArT/a", "3"], ["train/real/ArT/b", "1"],
                     ["train/real/SynthX", "1"], ["val/IIIT5k", "1"], ["test/IIIT5k", "2"], ["train/real", "5"],
                     ["val", "1"], ["test", "2"]]
    assert ("overlap: train/real/ArT/a image-000000003 = test/IIIT5k image-000000002 (IMG/2.jpg) [same bytes]"
            in out)
    assert "overlap: train/real/SynthX image-000000001 = test/IIIT5k image-000000002 (IMG/2.jpg) [same pixels]" in out
    link = tmp_path / "data" / "train" / "real" / "ArT" / "a" / "data.mdb"
    assert link.is_symlink() and link.resolve() == (sources / "ArT" / "train" / "a" / "data.mdb").resolve()
    dm = SceneTextDataModule(str(tmp_path / "data"), "real", (32, 128), 25, CHARSET_94, CHARSET_36, 2, 0, False)
    assert len(dm.train_dataset) == 5 and len(dm.val_dataset) == 1


def test_without_pixels_only_identical_bytes_overlap(sources, recipe, tmp_path):
    build_dataset.assemble(build_dataset.plan(build_dataset.load_recipe(str(recipe))[1], sources)[0],
                           tmp_path / "data", link="copy")
    overlaps = build_dataset.find_overlaps(tmp_path / "data")
    assert [(o.train_set, o.train_key, o.test_set, o.test_key) for o in overlaps] == [
        ("train/real/ArT/a", "image-000000003", "test/IIIT5k", "image-000000002")]
    assert not (tmp_path / "data" / "train" / "real" / "ArT" / "a" / "data.mdb").is_symlink()


def test_missing_sources_fail_unless_allowed(sources, tmp_path, capsys):
    recipe = tmp_path / "gaps.yaml"
    recipe.write_text("sets:\n  train/real:\n    ArT: ArT/train\n    Nowhere:\n  test:\n    SVT: SVT/test\n")
    with pytest.raises(SystemExit):
        build_dataset.main([str(recipe), str(sources), str(tmp_path / "data")])
    assert "sources missing" in capsys.readouterr().err and not (tmp_path / "data").exists()
    build_dataset.main([str(recipe), str(sources), str(tmp_path / "data"), "--allow-missing"])
    out, err = capsys.readouterr()
    assert "source missing, skipped: train/real/Nowhere" in err and "test/SVT" in err
    assert "overlap check: no test image is in a training or validation set" in out


def test_shipped_recipes():
    _, real = build_dataset.load_recipe("real")
    description, rbu = build_dataset.load_recipe("rbu")
    assert "RBU (6.5M)" in description
    assert set(real["train/real"]) == {"ArT", "COCOv2.0", "LSVT", "MLT19", "OpenVINO", "RCTW17", "ReCTS", "TextOCR",
                                       "Uber"}
    assert set(rbu["train/real"]) - set(real["train/real"]) == {"IC13_val", "IC15_val", "IIIT5k_val", "SVT_val",
                                                                "Union14M-L"}
    assert rbu["val"] == real["val"] and rbu["test"] == real["test"]
    assert {"IC13_857", "IC15_1811", "HOST", "WOST", "Union14M-Benchmarks", "LTB"} <= set(real["test"])
