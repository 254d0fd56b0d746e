"""Nothing lost and nothing run that should not be: hostile checkpoint files on every load path, checkpoint writes
killed or out of disk space (faults injected by tests/faults.py), runs started together, a diverging run, and bad
configuration or resume input."""
import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from conftest import make_tiny_model
from faults import inject
from hostile import Payload
from runs import train, train_command

from strhub.app.overrides import check_sections
from strhub.keys import ConfigError
from strhub.models.checkpoint import InvalidCheckpointError, best_checkpoint, load_model
from strhub.models.clip import read_clip_state_dict
from strhub.models.clip4str.system import CLIP4STRSystem
from strhub.models.safe_load import safe_load
from strhub.models.utils import load_from_checkpoint, load_weights
from strhub.training.callbacks import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    NonFiniteTrainingError,
    check_resume_checkpoint,
)

BEST = "epoch=0-step=2-val_accuracy=99.0000-val_NED=99.0000.ckpt"



def write_raw_pickle(path: Path, payload: Payload) -> None:
    with open(path, "wb") as file:
        pickle.dump({"state_dict": payload}, file)


def write_raw_pickle_protocol_2(path: Path, payload: Payload) -> None:
    with open(path, "wb") as file:
        pickle.dump({"state_dict": payload}, file, protocol=2)


def write_torch_zip(path: Path, payload: Payload) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {"x": payload}}, path)


def write_torch_legacy(path: Path, payload: Payload) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {"x": payload}}, path, _use_new_zipfile_serialization=False)


LOADERS: Dict[str, Callable[[Path], object]] = {
    "load_model (read.py)": load_model,
    "load_from_checkpoint (test.py)": load_from_checkpoint,
    "load_weights (pretrained=)": lambda path: load_weights(make_tiny_model(), path),
    "read_clip_state_dict (model.clip_pretrained=)": read_clip_state_dict,
    "check_resume_checkpoint (ckpt_path=)": check_resume_checkpoint,
    "AtomicCheckpointIO (Lightning's resume)": lambda path: AtomicCheckpointIO().load_checkpoint(path),
    "best_checkpoint (a run folder)": lambda path: best_checkpoint(path.parent),
}


@pytest.mark.parametrize("write", [write_raw_pickle, write_raw_pickle_protocol_2, write_torch_zip,
                                   write_torch_legacy], ids=lambda f: f.__name__[len("write_"):])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_hostile_checkpoints_never_run_code(write: Callable, loader: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not make any loader unsafe
    marker = tmp_path / "payload_ran"
    path = tmp_path / BEST
    write(path, Payload(marker))
    with pytest.raises(InvalidCheckpointError, match="refusing to load|no readable checkpoint"):
        LOADERS[loader](path)
    assert not marker.exists()


def test_unusable_resume_files_get_clear_errors(tiny_model: CLIP4STRSystem, tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3, loss 0.1\n")
    with pytest.raises(InvalidCheckpointError, match=r"notes\.ckpt is not a readable PyTorch checkpoint"):
        check_resume_checkpoint(text)
    weights = tmp_path / "weights.pt"
    torch.save(tiny_model.model.state_dict(), weights)
    with pytest.raises(InvalidCheckpointError, match=r"not a Lightning training checkpoint.*pretrained="):
        check_resume_checkpoint(weights)
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(InvalidCheckpointError, match=r"last\.ckpt is not a readable PyTorch checkpoint"):
        check_resume_checkpoint(truncated)


def test_a_failed_write_keeps_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)
    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", open)  # `inject` replaces it; the context puts it back
        patch.setattr("io.open", open)
        inject(full_at_write=1)
        with pytest.raises(CheckpointWriteError, match=r"last\.ckpt: the checkpoint needs [\d.]+ MiB.*kept: last"):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(2**19)}, "global_step": 2}, path)
    assert safe_load(path)["global_step"] == 1 and sorted(os.listdir(path.parent)) == ["last.ckpt"]
    with pytest.raises(NonFiniteTrainingError, match=r"1 of 2 weight tensors hold NaN"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(2), "b": torch.tensor([float("nan")])}}, path)
    assert safe_load(path)["global_step"] == 1


def test_model_keys_are_checked_against_the_model() -> None:
    target = "strhub.models.clip4str.system.CLIP4STRSystem"
    check_sections({"model": {"_target_": target, "_convert_": "all", "name": "tiny", "batch_size": 16}})
    with pytest.raises(ConfigError, match=r"unknown model key \(CLIP4STRSystem takes no such parameter\): "
                                          r"'model\.dropuot' \(did you mean 'model\.dropout'\?\)"):
        check_sections({"model": {"_target_": target, "batch_size": 16, "dropuot": 0.2}})
    with pytest.raises(ConfigError, match=r"model\.batch_size must be int, got 'abc' \(str\)"):
        check_sections({"model": {"_target_": target, "batch_size": "abc"}})
    with pytest.raises(ConfigError, match=r"model\.img_size must be Sequence\[int\], got \[32, 'x'\]"):
        check_sections({"model": {"_target_": target, "img_size": [32, "x"]}})


def test_a_kill_during_a_checkpoint_write_leaves_no_broken_checkpoint(data_root: Path, tmp_path: Path) -> None:
    """The run folder on another file system than $TMPDIR; the process dies 1 MiB into its second checkpoint file."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    train(data_root, run_dir, "trainer.max_steps=4", faults=["--cross-device", "--kill-at-write", "2"], env=env,
          returncode=-9)
    checkpoints = run_dir / "checkpoints"
    for path in checkpoints.glob("*.ckpt"):
        safe_load(path, mmap=True)  # whatever is under a checkpoint name is whole
    assert best_checkpoint(run_dir).name.startswith("epoch=0-step=2-")
    assert [p.name.endswith(".partial") for p in checkpoints.glob(".*")] == [True]
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.is_file()]  # nothing left in $TMPDIR either


def test_a_full_disk_stops_the_run_cleanly_and_keeps_the_checkpoints(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(data_root, run_dir, "trainer.max_steps=4", faults=["--cross-device", "--full-at-write", "2"],
                 returncode=1)
    output = proc.stdout + proc.stderr
    assert f"CheckpointWriteError: no space left to write {run_dir / 'checkpoints' / 'last.ckpt'}: the checkpoint " \
           "needs 50." in output and "Traceback" not in output
    (best,) = (run_dir / "checkpoints").iterdir()
    assert best.name.startswith("epoch=0-step=2-") and safe_load(best, mmap=True)["global_step"] == 2


def test_runs_started_in_the_same_second_get_their_own_folders(data_root: Path, tmp_path: Path) -> None:
    start = int(time.time()) + 10  # after both have imported what they need
    command = train_command(data_root, None, "trainer.max_steps=1", faults=["--start-at", str(start)])
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    folders = sorted((tmp_path / "outputs" / "vl4str-tiny").iterdir())
    assert len(folders) == 2 and folders[1].name.startswith(folders[0].name), folders
    for folder in folders:
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert (folder / "train.log").read_text().count("Run folder: ") == 1


def test_a_diverging_run_stops_with_a_named_error_and_saves_finite_weights_only(data_root: Path,
                                                                               tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(data_root, run_dir, "trainer.max_steps=12", "model.lr=1e6", "seed=0", "max_nonfinite_steps=3",
                 returncode=1)
    output = proc.stdout + proc.stderr
    assert "NonFiniteTrainingError: 3 optimizer steps in a row" in output and "Traceback" not in output
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        state_dict = safe_load(path)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point()), path.name


def test_a_hostile_resume_file_outside_a_run_runs_nothing_and_writes_nothing_beside_it(data_root: Path,
                                                                                      tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    marker = tmp_path / "payload_ran"
    hostile = downloads / "model.ckpt"
    write_raw_pickle(hostile, Payload(marker))
    proc = train(data_root, None, f"ckpt_path={hostile}", cwd=tmp_path, returncode=1,
                 env=dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))
    assert f"InvalidCheckpointError: refusing to load {hostile}" in proc.stdout + proc.stderr
    assert not marker.exists() and sorted(os.listdir(downloads)) == ["model.ckpt"]
    assert sorted(os.listdir(tmp_path)) == ["downloads"]  # the new run's folder, made before the check, is removed
