"""train.py run as a user runs it, on the tiny config and the `data_root` fixture's words: the command lines and
checks that the training tests share."""
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from strhub.models.safe_load import safe_load

REPO = Path(__file__).resolve().parents[1]


def train_command(data_root: Path, run_dir: Optional[Path], *overrides: str, faults: Sequence[str] = ()) -> List[str]:
    """The command line of a tiny CPU run (validation every 2 steps; `hydra.run.dir` left to its default when
    `run_dir` is None), run through tests/faults.py when `faults` are given."""
    launcher = [str(REPO / "tests" / "faults.py"), *faults, "--"] if faults else [str(REPO / "train.py")]
    settings = ["+experiment=tiny", "dataset=custom", f"data.root_dir={data_root}", "data.num_workers=0",
                "model.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
                "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1"]
    run = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return [sys.executable, *launcher, *settings, *run, *overrides]


def train(data_root: Path, run_dir: Optional[Path], *overrides: str, faults: Sequence[str] = (), cwd: Path = REPO,
          env: Optional[Dict[str, str]] = None, returncode: int = 0) -> subprocess.CompletedProcess:
    """Runs train.py to its end and checks its exit status."""
    proc = subprocess.run(train_command(data_root, run_dir, *overrides, faults=faults), cwd=cwd, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def global_step(path: Path) -> int:
    return safe_load(path, mmap=True)["global_step"]
