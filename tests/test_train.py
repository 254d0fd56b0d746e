"""train.py run as a user runs it, on the tiny config and a few rendered words: checkpoints and logs of a run,
resuming a run stopped mid-epoch, two-process DDP on the CPU, fine-tuning with a charset file and testing after
training."""
import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch
import yaml

from strhub.data.utils import CHARSET_94
from strhub.tools import render_words
from strhub.tools.create_lmdb import write_lmdb

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "misc" / "test_images"
CHECKPOINT_NAME = re.compile(r"epoch=\d+-step=\d+-val_accuracy=\d+\.\d{4}-val_NED=\d+\.\d{4}\.ckpt")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 rendered training words (4 batches of 16), 16 validation words, and test/SVT from misc/test_images."""
    root = tmp_path_factory.mktemp("data")
    render_words.main([str(root), "--train", "64", "--val", "16", "--test", "0"])
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    write_lmdb(root / "test" / "SVT", [((TEST_IMAGES / name).read_bytes(), label)
                                      for name, label in (line.split("\t") for line in lines)])
    return root


def train_args(data_root: Path, run_dir: Path, *overrides: str) -> List[str]:
    return [sys.executable, "train.py", "+experiment=tiny", "dataset=custom", f"data.root_dir={data_root}",
            "data.num_workers=0", "model.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.precision=32", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}", *overrides]


def train(data_root: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_args(data_root, run_dir, *overrides), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def logged_loss_steps(run_dir: Path, version: int = 0) -> List[int]:
    """Steps of the training losses in the CSV log of the run's `version`-th start."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("loss")]


def test_run_writes_checkpoints_logs_and_config(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(data_root, run_dir, "trainer.max_steps=2")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and CHECKPOINT_NAME.fullmatch(names[0]), names
    assert names[0].startswith("epoch=0-step=2-")
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 2
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["root_dir"] == str(data_root) and config["model"]["name"] == "vl4str-tiny"
    assert "${" not in (run_dir / "config.yaml").read_text()
    assert list(run_dir.glob("events.out.tfevents.*")) and logged_loss_steps(run_dir) == [0, 1]
    assert "lr-AdamW" in (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    assert re.search(r"step 2: loss \d+\.\d+, val_loss \d+\.\d+, val_accuracy", (run_dir / "train.log").read_text())


def test_interrupted_run_resumes_from_last_ckpt_at_its_step(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    settings = ["trainer.max_steps=8", "trainer.val_check_interval=1"]
    proc = subprocess.Popen(train_args(data_root, run_dir, *settings), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the first epoch
    proc.wait(timeout=120)
    stopped_at = global_step(last)
    assert 1 <= stopped_at < 8

    proc = train(data_root, tmp_path / "elsewhere", *settings, f"ckpt_path={last}")
    assert f"Restoring states from the checkpoint path at {last}" in proc.stdout + proc.stderr
    assert global_step(last) == 8
    resumed = logged_loss_steps(run_dir, version=1)  # logs continue in the same run folder
    assert len(resumed) == 8 - stopped_at and min(resumed) >= stopped_at, resumed


def test_two_process_ddp_on_cpu_scales_step_settings(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    proc = train(data_root, run_dir, "trainer.devices=2", "trainer.max_steps=4")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 2 and config["trainer"]["val_check_interval"] == 1
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 2


def test_fine_tune_with_a_charset_file_and_test_after_training(data_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(data_root, source, "trainer.max_steps=1")
    charset_file = tmp_path / "chars.txt"
    charset_file.write_text("\n".join(CHARSET_94) + "\n")
    run_dir = tmp_path / "tuned"
    proc = train(data_root, run_dir, "trainer.max_steps=2", "charset=file", f"charset_file={charset_file}",
                 f"pretrained={source / 'checkpoints' / 'last.ckpt'}", "test_after_train=true")
    assert f"Initialised every weight from {source / 'checkpoints' / 'last.ckpt'}" in proc.stdout + proc.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["charset_train"] == CHARSET_94
    assert re.search(r"^\| SVT      \|        10 \|", proc.stdout, re.M)
    best = next(p for p in (run_dir / "checkpoints").iterdir() if CHECKPOINT_NAME.fullmatch(p.name))
    (markdown,) = best.parent.glob(f"{best.name}.log_newTrue.*.md")
    assert markdown.with_suffix(".json").is_file()
