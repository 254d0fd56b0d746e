import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from strhub.config import model_config
from strhub.models.clip4str.system import CLIP4STRSystem
from strhub.models.utils import create_model
from strhub.tools import render_words
from strhub.tools.create_lmdb import folder_records, write_lmdb

# One torch thread in the test process and in the commands the tests start, unless OMP_NUM_THREADS says
# otherwise: on a busy machine, every parallel region of a multi-threaded process waits for its slowest thread, which
# the scheduler has put aside, and the tiny models' many small operations then run 5 to 50 times slower; with one
# thread, a busy machine slows the suite in proportion to the load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The fuzzing suite's runs (tests/test_fuzz.py): `default`, a fixed small number of examples per property from a fixed
# seed (the same examples on every run, within the suite's time budget); `deep`, many random ones
# (`pytest tests/test_fuzz.py --hypothesis-profile=deep`). Each test that needs fewer examples says so.
settings.register_profile("default", max_examples=8, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=200, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile("default")

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "misc" / "test_images"
# A sample of the four real benchmarks, as images and labels (tests/data/README.md): `real_root` makes the LMDBs.
REAL_SAMPLE = REPO / "tests" / "data" / "real" / "test"
# Its counts under the 36-character protocol: IIIT5k's two labels of 44 characters are dropped.
REAL_COUNTS = {"IIIT5k": 20, "SVT": 20, "SVTP": 20, "CUTE80": 23}

TINY_ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": [32, 64], "patch_size": 16, "width": 64, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "layers": 2},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long test whose behaviour a fast test also covers "
                                       "(deselect with -m 'not slow')")


# A tiny CLIP whose text tower is a Hugging Face model (see `make_hf_folder`).
TINY_HF_ARCH = {"embed_dim": 64, "vision_cfg": TINY_ARCH["vision_cfg"],
                "text_cfg": {"hf_pooler_type": "mean_pooler", "hf_proj_type": "linear"}}
# Words in several scripts, to train the tiny tower's tokenizer on.
MULTILINGUAL_WORDS = ["hello", "Straße", "東京", "北京大学", "привет", "мир", "مرحبا", "नमस्ते", "Tiếng", "Việt", "γειά",
                      "한국어", "日本語"]


def make_hf_folder(folder: Path, weights: bool = True, **config) -> Path:
    """A tiny XLM-RoBERTa in Hugging Face's save_pretrained layout, with random weights (or only its config), and
    a fast BPE tokenizer trained on `MULTILINGUAL_WORDS` (<s> caption </s>, padded with <pad> = 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoModel, PreTrainedTokenizerFast, XLMRobertaConfig

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(MULTILINGUAL_WORDS, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    settings = dict(vocab_size=tokenizer.get_vocab_size(), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=96, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2)
    hf_config = XLMRobertaConfig(**{**settings, **config})
    if weights:
        torch.manual_seed(0)
        AutoModel.from_config(hf_config, add_pooling_layer=False).save_pretrained(folder)
    else:
        hf_config.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face text tower's folder (`make_hf_folder`), shared: tests that change it make their own."""
    return make_hf_folder(tmp_path_factory.mktemp("hf_tower"))


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
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose test/IIIT5k, SVT, SVTP and CUTE80 are LMDBs of the real sample in tests/data."""
    root = tmp_path_factory.mktemp("real")
    for folder in sorted(REAL_SAMPLE.iterdir()):
        write_lmdb(root / "test" / folder.name, folder_records(folder, folder / "labels.tsv"))
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` experiment with random weights, saved as Lightning saves a model (state dict + hyper-parameters)."""
    torch.manual_seed(0)
    model = create_model("tiny")
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path
