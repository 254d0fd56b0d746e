"""The Hydra configs compose for every experiment, charset and dataset, and the training scripts keep the
effective batch of 1024."""
import os
import string
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from strhub.config import experiments, register_resolvers
from strhub.models.registry import Family

REPO = Path(__file__).resolve().parents[1]
CLIP_FILES = {"vl4str": "ViT-B-16.pt", "vl4str-base32": "ViT-B-32.pt", "vl4str-large": "ViT-L-14.pt",
              "vl4str-huge": "OpenCLIP-ViT-H-14-laion2B-s32B-b79K.bin", "vl4str-xlmr": "xlm-roberta-base-ViT-B-32.bin"}


def composed(config_name: str = "main", *overrides: str) -> dict:
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        config = compose(config_name, overrides=list(overrides))
    return OmegaConf.to_container(config, resolve=True)


@pytest.mark.parametrize("experiment", sorted(CLIP_FILES))
def test_experiments_name_their_clip_file(experiment: str) -> None:
    config = composed("main", f"+experiment={experiment}")
    assert Path(config["model"]["clip_pretrained"]).name == CLIP_FILES[experiment]
    assert config["model"]["img_size"] == [224, 224] == config["data"]["img_size"]
    assert config["data"]["root_dir"] == "data" and config["data"]["train_dir"] == "real"
    assert config["data"]["charset_train"] == config["model"]["charset_train"] == string.printable[:94]
    trainer = config["trainer"]
    assert trainer["gradient_clip_val"] == 20 and trainer["precision"] == "16-mixed" and trainer["num_nodes"] == 1


def test_the_multilingual_experiment_reads_its_text_tower_beside_its_clip_file(tmp_path: Path) -> None:
    (tmp_path / "chars.txt").write_text("東\n京\nм\nи\nр\n")
    config = composed("main", "+experiment=vl4str-xlmr", "charset=file", f"charset_file={tmp_path / 'chars.txt'}")
    model = config["model"]
    folder = Path(model["text_tower"]["hf_path"])
    assert folder.name == "xlm-roberta-base" and folder.parent == Path(model["clip_pretrained"]).parent
    assert model["clip_arch"] == "xlm-roberta-base-ViT-B-32" and model["context_length"] == 16
    assert model["charset_test"] == model["charset_train"] == config["data"]["charset_test"] == "東京мир"


@pytest.mark.parametrize("experiment", experiments())
def test_every_experiment_composes(experiment: str) -> None:
    config = composed("main", f"+experiment={experiment}")
    family = Family.of(experiment)
    assert config["model"]["_target_"] == f"{family.package}.system.{family.system}"
    assert config["data"]["img_size"] == config["model"]["img_size"]
    assert OmegaConf.to_container(OmegaConf.create(config["model"])) == config["model"]  # plain data, resolved


def test_charsets_datasets_and_charset_file(tmp_path: Path) -> None:
    for name, size in (("36_lowercase", 36), ("62_mixed-case", 62), ("94_full", 94)):
        assert len(composed("main", f"charset={name}")["model"]["charset_train"]) == size
    assert composed("main", "dataset=synth")["data"]["train_dir"] == "synth"
    custom = composed("main", "dataset=custom", "data.root_dir=/my/lmdbs")["data"]
    assert custom["root_dir"] == "/my/lmdbs" and custom["train_dir"] == ""
    (tmp_path / "chars.txt").write_text("a\nb\nc\n")
    config = composed("main", "charset=file", f"charset_file={tmp_path / 'chars.txt'}")
    assert config["model"]["charset_train"] == config["data"]["charset_train"] == "abc"
    assert config["data"]["normalize_unicode"] and not config["test_full_charset"]


def test_unicode_charset_keeps_labels_as_written_and_tests_on_the_whole_charset(tmp_path: Path) -> None:
    (tmp_path / "chars.txt").write_text("中\n文\n \nя\nÉ\n", encoding="utf-8")
    config = composed("main", "charset=unicode", f"charset_file={tmp_path / 'chars.txt'}",
                      "data.remove_whitespace=false")
    model, data = config["model"], config["data"]
    assert model["charset_train"] == model["charset_test"] == data["charset_train"] == data["charset_test"] == "中文 яÉ"
    assert not data["normalize_unicode"] and not data["remove_whitespace"] and config["test_full_charset"]


def test_bench_config_runs_in_place() -> None:
    config = composed("bench", "+experiment=tiny")
    assert config["precision"] == "32" and config["throughput_batch"] > 1 and config["model"]["name"] == "vl4str-tiny"


def test_training_scripts_keep_the_effective_batch_of_1024() -> None:
    env = dict(os.environ, LAUNCHER="echo", GPUS="2", BATCH="128", CLIP_DIR="/clip", DATA_ROOT="/data")
    proc = subprocess.run(["bash", "scripts/vl4str_base.sh", "trainer.max_epochs=3"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 node(s) x 2 GPU(s) x 4 accumulation x 128 images = 1024" in proc.stdout
    command = proc.stdout.splitlines()[-1].split()
    for arg in ("+experiment=vl4str", "data.root_dir=/data", "trainer.devices=2", "trainer.accumulate_grad_batches=4",
                "model.batch_size=128", "model.clip_pretrained=/clip/OpenCLIP-ViT-B-16-DataComp-XL-s13B-b90K.bin"):
        assert arg in command
    assert command[-1] == "trainer.max_epochs=3"  # the user's overrides come last and win
    proc = subprocess.run(["bash", "scripts/vl4str_large.sh"], cwd=REPO, env=dict(os.environ, GPUS="3"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "must divide 1024" in proc.stderr


@pytest.mark.parametrize("script, expected", [
    ("str_adapter.sh", ["+experiment=str_adapter", "trainer.devices=2", "model.batch_size=512",
                        "trainer.accumulate_grad_batches=1", "model.clip_pretrained=/clip/ViT-B-16.pt", "model.lr=8e-4",
                        "trainer.max_epochs=16"]),
    ("parseq.sh", ["+experiment=parseq-base", "trainer.devices=4", "model.batch_size=256",
                   "trainer.accumulate_grad_batches=1", "model.lr=8.4e-5", "trainer.max_epochs=16"]),
])
def test_baseline_scripts_run_the_original_recipes(script: str, expected: list) -> None:
    env = dict(os.environ, LAUNCHER="echo", CLIP_DIR="/clip", DATA_ROOT="/data")
    proc = subprocess.run(["bash", f"scripts/{script}", "model.dropout=0.2"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "= 1024" in proc.stdout
    command = proc.stdout.splitlines()[-1].split()
    assert all(arg in command for arg in expected + ["data.root_dir=/data"]), command
    assert command[-1] == "model.dropout=0.2"
    assert composed("main", *command[1:])["model"]["dropout"] == 0.2  # the command composes
