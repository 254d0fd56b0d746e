"""What a new user meets first, run as they run it: a mistyped key is refused with the closest known names
(train.py, bench.py, test.py, read.py and the Python API), a CLIP with random weights is announced, a failed start
leaves no run folder behind, a missing GPU or checkpoint is one line naming what was typed, defaults fit the
machine, an empty prediction is shown as such, and training's closing line names the limit that ended it."""
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from runs import train, train_command

from strhub.app.overrides import check_overrides
from strhub.config import experiments, model_config, register_resolvers
from strhub.data.transforms import get_transform
from strhub.host import default_device, worker_count
from strhub.keys import ConfigError
from strhub.models.checkpoint import load_model
from strhub.training.run import random_clip_notice, stop_reason

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "misc" / "test_images" / "demo_1.png"


def run(args: List[str], cwd: Path = REPO, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **(env or {})))


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.parametrize("overrides, message", [
    (["model.refine_iter=2"], r"unknown key: 'model\.refine_iter' \(did you mean 'model\.refine_iters'\?\)$"),
    (["+model.lrr=1"], r"unknown model key \(CLIP4STRSystem takes no such parameter\): 'model\.lrr' "
                       r"\(did you mean 'model\.lr'\?\)$"),
    (["+data.num_worker=1"], r"'data\.num_worker' \(did you mean 'data\.num_workers'\?\)$"),
    (["+seeed=0"], r"unknown top-level key: 'seeed' \(did you mean 'seed'\?\)$"),
    (["modle.lr=1"], r"unknown key: 'modle' \(did you mean 'model'\?\)$"),
    (["trainer.enable_progress_bar=false"], r"trainer\.enable_progress_bar is not in the config; add it with "
                                            r"\+trainer\.enable_progress_bar=false$"),
    (["model.batch_size=abc"], r"model\.batch_size must be int, got 'abc' \(str\)$"),
    (["-m", "trainer.max_steps=1,2", "+model.refine_iter=2"],  # a sweep: each job is checked
     r"'model\.refine_iter' \(did you mean 'model\.refine_iters'\?\)$"),
])
def test_train_overrides_of_unknown_keys_are_refused_with_the_closest_names(overrides: List[str],
                                                                            message: str) -> None:
    register_resolvers()
    with pytest.raises(ConfigError, match=message):
        check_overrides("main", ["+experiment=tiny", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["+experiment=tiny", "throughput_bach=2"],
     r"unknown key: 'throughput_bach' \(did you mean 'throughput_batch'\?\)$"),
    (["-m", "+experiment=tiny,parseq-mini", "+model.refine_iter=2"],  # a sweep: each job is checked
     r"'model\.refine_iter' \(did you mean 'model\.refine_iters'\?\)$"),
    (["-m", "+experiment=tiny,parseq-mini", "min_run_tme=1"], r"'min_run_tme' \(did you mean 'min_run_time'\?\)$"),
])
def test_bench_overrides_of_unknown_keys_are_refused_with_the_closest_names(overrides: List[str],
                                                                            message: str) -> None:
    register_resolvers()
    with pytest.raises(ConfigError, match=message):
        check_overrides("bench", overrides)


def test_every_config_passes_the_key_check() -> None:
    register_resolvers()
    for name in experiments():
        check_overrides("main", [f"+experiment={name}", "+trainer.enable_progress_bar=false", "charset=36_lowercase"])
    check_overrides("bench", ["+experiment=parseq-mini", "device=cpu", "throughput_batch=2"])


def test_the_python_api_refuses_unknown_and_mistyped_settings(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"'bogus', 'refine_iter' \(did you mean 'refine_iters'\?\)"):
        load_model(checkpoint, bogus=3, refine_iter=2)
    with pytest.raises(ConfigError, match=r"refine_iters must be int, got '2' \(str\)"):
        load_model(checkpoint, refine_iters="2")


def test_train_py_refuses_a_mistyped_key_in_one_line_before_writing_anything(data_root: Path,
                                                                              tmp_path: Path) -> None:
    proc = run(train_command(data_root, None, "model.refine_iter=2"), cwd=tmp_path)
    assert proc.returncode == 1
    assert last_line(proc.stderr) == ("train.py: error: unknown key: 'model.refine_iter' (did you mean "
                                      "'model.refine_iters'?)")
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_a_failed_start_leaves_no_run_folder(tmp_path: Path) -> None:
    """No training data: the start fails after the run folder, its logs and config were made."""
    (tmp_path / "empty").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    proc = train(tmp_path / "empty", None, "trainer.max_steps=1", cwd=work, returncode=1)
    output = proc.stdout + proc.stderr
    assert "FileNotFoundError: training data not found" in output and "Traceback" not in output
    assert "Note: vl4str-tiny has a CLIP of its own shape (clip_arch) and clip_pretrained null" in output
    assert "the start failed before its first training step" in output
    assert not list(work.iterdir())  # not even outputs/vl4str-tiny


def test_a_random_clip_is_a_warning_and_a_failed_start_keeps_what_its_folder_held(tmp_path: Path) -> None:
    """`python train.py` as it comes (a random ViT-B/16), into a folder that already holds a run."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine\n")
    proc = run([sys.executable, str(REPO / "train.py"), "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"],
               cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    (warning,) = [line for line in output.splitlines() if "[WARNING]" in line]
    assert "the ViT-B-16 CLIP of vl4str starts from RANDOM weights" in warning
    assert "model.clip_pretrained=FILE" in warning and "+experiment=vl4str" in warning
    assert "already holds a run" in output
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "notes.txt", "train.log"]
    assert "TrainingError" in (run_dir / "train.log").read_text()


def test_random_clip_notice_is_a_warning_for_a_released_architecture_and_a_note_for_a_small_shape() -> None:
    level, line = random_clip_notice(model_config())  # train.py's default: vl4str, ViT-B-16, no weights
    assert level == logging.WARNING and "RANDOM weights" in line
    level, line = random_clip_notice(model_config("str_adapter-mini"))
    assert level == logging.INFO and "str_adapter-mini has a CLIP of its own shape" in line
    assert random_clip_notice(model_config("vl4str")) is None  # names pretrained/clip/ViT-B-16.pt
    assert random_clip_notice(model_config("parseq-mini")) is None  # no CLIP


def test_a_missing_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run([sys.executable, "bench.py", "+experiment=tiny", "device=cuda"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("bench.py: error: device 'cuda': torch sees no CUDA GPU on this machine "
                                   "(torch.cuda.is_available() is False); use the cpu device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == default_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device 'cuda:1': torch sees no CUDA GPU"):
        default_device("cuda:1")
    with pytest.raises(ConfigError, match="device 'gpu' is not a torch device"):
        default_device("gpu")


def test_test_py_and_read_py_refuse_a_mistyped_override_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    proc = run([sys.executable, "test.py", str(checkpoint), "refine_iter:int=2", "--data_root", str(tmp_path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr) == ("test.py: error: unknown setting for a vl4str model: 'refine_iter' (did you "
                                      "mean 'refine_iters'?)")
    proc = run([sys.executable, "read.py", str(checkpoint), str(IMAGE), "refine_iters:str=2"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr) == "read.py: error: refine_iters must be int, got '2' (str)"


def test_read_py_shows_an_empty_prediction_as_such(checkpoint: Path, tmp_path: Path) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    for key, tensor in saved["state_dict"].items():
        if key.endswith("head.bias"):
            tensor[0] = 1e4  # EOS first, whatever the image
    silent = tmp_path / "silent.ckpt"
    torch.save(saved, silent)
    proc = run([sys.executable, "read.py", str(silent), str(IMAGE), "--confidence"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{IMAGE}: (empty) (1.0000)\n"
    model = load_model(silent).eval()
    with torch.inference_mode(), Image.open(IMAGE) as image:
        logits = model(get_transform(model.image_size)(image).unsqueeze(0))
    assert model.tokenizer.decode(logits.softmax(-1))[0] == [""]  # the raw text, as --json prints it


@pytest.mark.parametrize("script", ["read.sh", "test.sh"])
def test_scripts_name_a_missing_checkpoint_as_typed(script: str, tmp_path: Path) -> None:
    proc = run(["bash", f"scripts/{script}", "cpu", "no_such.ckpt", "misc/test_images"], env={"OUTPUTS": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr == (f"{script}: error: checkpoint not found: no_such.ckpt (neither a path from here nor a "
                           f"name under OUTPUTS={tmp_path})\n")


def test_worker_defaults_fit_the_machine() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert worker_count(4) == min(4, cpus) and worker_count(0) == 0
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        assert compose("main").data.num_workers == min(8, cpus)


def test_the_closing_line_names_the_limit_that_ended_training() -> None:
    """train.py's last line says what ended training (test_train.py sees trainer.max_steps do it)."""
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    timed = pl.Trainer(max_steps=600, max_time="00:00:00:00", **options)
    assert stop_reason(timed) == "trainer.max_time reached after 0 s"
    assert stop_reason(pl.Trainer(max_epochs=0, **options)) == "trainer.max_epochs=0 reached"
    assert stop_reason(pl.Trainer(max_steps=600, **options)) == "stopped before its limits"
