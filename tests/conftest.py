from pathlib import Path

import pytest
import torch

from strhub.models.clip4str.system import CLIP4STRSystem
from strhub.models.registry import model_config
from strhub.models.utils import create_model
from strhub.tools import render_words
from strhub.tools.create_lmdb import write_lmdb

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_IMAGES = REPO / "misc" / "test_images"

TINY_ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": [32, 64], "patch_size": 16, "width": 64, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "layers": 2},
}



def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long test whose behaviour a fast test also covers "
                                       "(deselect with -m 'not slow')")

def make_tiny_model(**overrides) -> CLIP4STRSystem:
    """A very small CLIP4STR with random weights (32x64 images, 8 image tokens + CLS)."""
    config = model_config()
    config.update(img_size=[32, 64], clip_arch=TINY_ARCH, dec_num_heads=4, text_freeze_nlayer=1)
    config.update(overrides)
    return CLIP4STRSystem(**config)


@pytest.fixture
def tiny_model() -> CLIP4STRSystem:
    torch.manual_seed(0)
    return make_tiny_model()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 rendered training words (4 batches of 16), 16 validation words, and test/SVT from misc/test_images."""
    root = tmp_path_factory.mktemp("data")
    render_words.main([str(root), "--train", "64", "--val", "16", "--test", "0"])
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    write_lmdb(root / "test" / "SVT", [((TEST_IMAGES / name).read_bytes(), label)
                                      for name, label in (line.split("\t") for line in lines)])
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` experiment with random weights, saved as Lightning saves a model (state dict + hyper-parameters)."""
    torch.manual_seed(0)
    model = create_model("tiny")
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path
