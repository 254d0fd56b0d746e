"""train.py run as a user runs it, on the tiny config and a few rendered words: checkpoints and logs of a run,
resuming a run killed mid-epoch, two-process DDP on the CPU, fine-tuning with a charset file and testing after
training."""
import csv
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import yaml
from runs import global_step, train, train_command

from strhub.tokenizer import CHARSET_94

CHECKPOINT_NAME = re.compile(r"epoch=\d+-step=\d+-val_accuracy=\d+\.\d{4}-val_NED=\d+\.\d{4}\.ckpt")


def logged_loss_steps(run_dir: Path, version: int = 0) -> List[int]:
    """Steps of the training losses in the CSV log of the run's `version`-th start."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("loss")]


def test_run_writes_checkpoints_logs_and_config(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(data_root, run_dir, "trainer.max_steps=3")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and CHECKPOINT_NAME.fullmatch(names[0]), names
    assert names[0].startswith("epoch=0-step=2-")
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 3  # the end of training, after the last validation
    text = (run_dir / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["data"]["root_dir"] == str(data_root) and config["model"]["name"] == "vl4str-tiny"
    assert "${" not in text and text.startswith("# python train.py +experiment=tiny ")
    assert list(run_dir.glob("events.out.tfevents.*")) and logged_loss_steps(run_dir) == [0, 1, 2]
    assert "lr-AdamW" in (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    log = (run_dir / "train.log").read_text()
    assert re.search(r"step 2: loss \d+\.\d+, val_loss \d+\.\d+, val_accuracy", log)
    assert re.search(r"Training ended at step 3 of 3: trainer\.max_steps=3 reached; training loss \d+\.\d{4} "
                     r"\(mean of the last 1 batches\)", log)
    assert "Note: vl4str-tiny has a CLIP of its own shape" in proc.stdout + proc.stderr
    assert (run_dir / "curves.png").stat().st_size > 0


def test_killed_run_resumes_in_its_folder_from_its_latest_validation(data_root: Path, tmp_path: Path) -> None:
    """kill -9 after the second validation (the tiny model's accuracy stays 0, so that one is no new best); the
    default run folder, under the working directory, is taken up again by the resumed run."""
    proc = subprocess.Popen(train_command(data_root, None, "trainer.max_steps=8"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        lasts = list(tmp_path.glob("outputs/vl4str-tiny/*/checkpoints/last.ckpt"))
        if lasts and global_step(lasts[0]) >= 4:
            proc.kill()
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before its second validation was saved"
    (run_dir,) = tmp_path.glob("outputs/vl4str-tiny/*")
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped_at = global_step(last)
    assert stopped_at in (4, 6)  # validations at 2, 4, 6, 8
    orphan = last.with_name(".last.ckpt.0f0f0f0f.partial")  # what a write killed halfway leaves
    orphan.write_bytes(b"\0" * 1024)
    first_config = (run_dir / "config.yaml").read_text()

    proc = train(data_root, None, "trainer.max_steps=8", f"ckpt_path={last}", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert f"Restoring states from the checkpoint path at {last}" in output
    assert global_step(last) == 8 and [p.name for p in tmp_path.glob("outputs/vl4str-tiny/*")] == [run_dir.name]
    resumed = logged_loss_steps(run_dir, version=1)  # logs continue in the same run folder
    assert len(resumed) == 8 - stopped_at and min(resumed) >= stopped_at, resumed
    assert not orphan.exists() and f"Removed {orphan}" in output
    assert (run_dir / "config.yaml").read_text() == first_config and (run_dir / "config_1.yaml").is_file()
    assert "step 8: loss" in (run_dir / "train.log").read_text()
    assert "Training curves: " in output and (run_dir / "curves.png").is_file()  # both starts, joined

    proc = train(data_root, tmp_path / "elsewhere", "trainer.max_steps=12", f"ckpt_path={last}", returncode=1)
    output = proc.stdout + proc.stderr
    assert "holds a learning-rate schedule of 8 steps and this run would train to step 12" in output
    assert f"pretrained={last}" in output and global_step(last) == 8
    assert "TrainingError" in (run_dir / "train.log").read_text()  # the run's log, not elsewhere/train.log


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
