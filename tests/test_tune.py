"""tune.py as a user runs it: a Ray Tune search of 4 `tiny` trials on the CPU, killed halfway and taken up again;
ASHA stops the trials that fall behind, the best one is named and its checkpoint loads."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import ray.tune
import torch
from hydra import compose, initialize_config_dir

from strhub.app.tune import search_space, validations
from strhub.config import CONFIG_DIR
from strhub.keys import ConfigError
from strhub.models.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]


def tune_command(data_root: Path, storage: Path, *overrides: str) -> List[str]:
    """A search of 4 trials of 6 steps (validations at 2, 4, 6) ranked on val_loss: one trial at lr 0.08, which
    learns, and three sampled between 1e-12 and 1e-10, which do not, so that ASHA has trials to stop."""
    return [sys.executable, str(REPO / "tune.py"), "+experiment=tiny", "dataset=custom", f"data.root_dir={data_root}",
            "data.num_workers=0", "model.batch_size=16", "trainer.precision=32", "trainer.val_check_interval=2",
            "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "trainer.max_steps=6", "seed=0",
            "tune.num_samples=4", "tune.gpus_per_trial=0", "tune.seed=0", f"tune.storage_path={storage}",
            "tune.name=search", "tune.metric=val_loss", "tune.mode=min", "tune.space.lr.lower=1e-12",
            "tune.space.lr.upper=1e-10", "tune.points_to_evaluate=[{lr: 0.08}]", *overrides]


@pytest.mark.slow
def test_search_killed_halfway_resumes_stops_trials_early_and_names_a_loadable_best(data_root: Path,
                                                                                   tmp_path: Path) -> None:
    search = tmp_path / "search"
    proc = subprocess.Popen(tune_command(data_root, tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:  # killed once a checkpoint is in the saved state
        checkpoints = list(search.glob("run_trial_*/checkpoint_*"))
        states = list(search.glob("experiment_state-*.json"))
        if checkpoints and states and states[0].stat().st_mtime > min(p.stat().st_mtime for p in checkpoints):
            proc.kill()
        time.sleep(0.2)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the search ended before it was killed"
    started = len(list(search.glob("run_trial_*")))
    assert started < 4

    proc = subprocess.run(tune_command(data_root, tmp_path, "tune.resume=true"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert f"Taking up the search in {search}" in output
    assert "Restoring states from the checkpoint path at" in output  # a trial went on from its checkpoint
    assert len(list(search.glob("run_trial_*"))) == 4
    stopped = int(re.search(r"Trials: 4, of which (\d+) stopped early by ASHA, 0 failed", output).group(1))
    assert stopped >= 1
    best = re.search(r"Best trial: (run_trial_\S+) \(lr 0\.08\): val_loss \d\.\d{4}; checkpoint: (\S+)", output)
    assert best, output[-3000:]
    checkpoint = Path(best.group(2))
    assert checkpoint.is_relative_to(search / best.group(1)) and (search / "tune.log").read_text().count("Best") == 1
    model = load_model(checkpoint).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 128)).shape[:2] == (1, 26)


def test_search_settings_are_checked_before_ray_starts() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("tune", overrides=["+experiment=tiny", "trainer.max_steps=7", "trainer.val_check_interval=2"])
    space = search_space(config.tune.space, config)
    assert isinstance(space["lr"], ray.tune.search.sample.Float) and space["lr"].lower == 1e-5
    assert validations(config) == 4
    wrong = [({"key": "model.lrr", "distribution": "loguniform", "lower": 1, "upper": 2},
              r"tune\.space\.lr\.key: 'model\.lrr' is not a key of the config"),
             ({"key": "model.lr", "distribution": "logunifrom"},
              r"tune\.space\.lr\.distribution must be one of loguniform, uniform, choice, got 'logunifrom'"),
             ({"key": "model.lr", "distribution": "choice"}, r"tune\.space\.lr: a choice distribution needs values")]
    for entry, message in wrong:
        with pytest.raises(ConfigError, match=message):
            search_space({"lr": entry}, config)
    config.trainer.max_steps = -1
    with pytest.raises(ConfigError, match=r"tune\.scheduler\.max_t is needed"):
        validations(config)
