#!/usr/bin/env python3
"""Runs the robustness scenarios end to end on the tiny config, as a user would meet them, and prints a table of
scenario -> outcome: hostile checkpoint files on every load path, a run killed with `kill -9` (between and during
checkpoint writes, with the run folder on another file system than $TMPDIR), a full disk, two runs started in the
same second, a diverging run, an undecodable test image, and bad resume or configuration input.

    python scripts/fault_injection.py [--workdir DIR] [--keep]

The run folders of the file-system scenarios are small tmpfs mounts, which needs root; without it those scenarios
use the working folder's file system (the disk-full one is then skipped). About 5 minutes on 2 CPU cores.
"""
import argparse
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from strhub.models.safe_load import InvalidCheckpointError, safe_load  # noqa: E402
from strhub.tools import render_words  # noqa: E402
from strhub.tools.create_lmdb import write_lmdb  # noqa: E402

TEST_IMAGES = REPO / "misc" / "test_images"
Outcome = Tuple[bool, str]


class Payload:
    """Unpickling it runs `touch MARKER` through os.system: a hostile checkpoint's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Lab:
    """The working folder: data, run folders, and the commands of the scenarios."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(root / "tmp"))
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def make_data(self) -> None:
        """640 rendered training words (40 batches of 16 per epoch), 16 for validation, and a test set with one
        undecodable image among the ten of misc/test_images."""
        render_words.main([str(self.data), "--train", "640", "--val", "16", "--test", "0", "--workers", "2"])
        lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
        records = [((TEST_IMAGES / name).read_bytes(), label) for name, label in (line.split("\t") for line in lines)]
        write_lmdb(self.data / "test" / "SVT", records[:4] + [(b"not an image", "word")] + records[4:])

    def train_command(self, run_dir: Optional[Path], *overrides: str) -> List[str]:
        settings = ["+experiment=tiny", "dataset=custom", f"data.root_dir={self.data}", "data.num_workers=0",
                    "model.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
                    "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "seed=0"]
        run = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
        return [sys.executable, str(REPO / "train.py"), *settings, *run, *overrides]

    def run(self, command: List[str], env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.root, env=dict(self.env, **(env or {})), capture_output=True,
                              text=True, timeout=1200)

    def train(self, run_dir: Optional[Path], *overrides: str, env: Optional[Dict[str, str]] = None
              ) -> subprocess.CompletedProcess:
        return self.run(self.train_command(run_dir, *overrides), env)

    def hostile_file(self, name: str) -> Tuple[Path, Path]:
        """A raw pickle (no torch header) whose payload would create a marker file."""
        marker, path = self.root / f"{name}.payload_ran", self.root / "downloads" / f"{name}.ckpt"
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as file:
            pickle.dump({"state_dict": Payload(marker)}, file)
        return path, marker


@contextmanager
def small_file_system(folder: Path, size_mib: int) -> Iterator[bool]:
    """A tmpfs of `size_mib` mounted on `folder` (True), or the folder on the working file system (False)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                                                    str(folder)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The line that says why a command failed: our logged error, argparse's, or the last traceback line."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    for line in lines:
        if "][ERROR] - " in line:
            return line.split("][ERROR] - ", 1)[1]
        if ": error: " in line:
            return line.split(": error: ", 1)[1]
    return lines[-1] if lines else "(no output)"


def shorten(text: str, width: int = 150) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def readable(folder: Path) -> Tuple[List[str], List[str]]:
    """The names of the readable and the unreadable `*.ckpt` files in `folder`."""
    good, bad = [], []
    for path in sorted(folder.glob("*.ckpt")):
        try:
            safe_load(path, mmap=True)
            good.append(path.name)
        except InvalidCheckpointError:
            bad.append(path.name)
    return good, bad


def step_of(path: Path) -> int:
    return safe_load(path, mmap=True)["global_step"]


def hostile_checkpoints(lab: Lab) -> Outcome:
    """A raw pickle with an os.system payload through read.py, test.py, pretrained=, and ckpt_path= (with
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which would make Lightning's own load unsafe)."""
    results = []
    commands = {
        "read.py": lambda path: [sys.executable, str(REPO / "read.py"), str(path), str(TEST_IMAGES / "demo_1.png")],
        "test.py": lambda path: [sys.executable, str(REPO / "test.py"), str(path), "--data_root", str(lab.data)],
        "pretrained=": lambda path: lab.train_command(None, f"pretrained={path}", "trainer.max_steps=1"),
        "ckpt_path=": lambda path: lab.train_command(None, f"ckpt_path={path}"),
    }
    for name, command in commands.items():
        path, marker = lab.hostile_file(name.strip(".=").replace(".", "_"))
        proc = lab.run(command(path), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
        results.append((name, proc.returncode != 0 and "refusing to load" in error_line(proc), marker.exists()))
    ok = all(refused and not ran for _, refused, ran in results)
    shown = ", ".join(f"{name} {'refused' if refused else 'NOT refused'}{', PAYLOAD RAN' if ran else ''}"
                      for name, refused, ran in results)
    return ok, f"{shown}; payload never ran" if ok else shown


def killed_between_writes(lab: Lab) -> Outcome:
    """kill -9 at about step 33 of a run validating every 10 steps; resume."""
    runs = lab.root / "killed"
    proc = subprocess.Popen(lab.train_command(runs, "trainer.max_steps=40", "trainer.val_check_interval=10"),
                            cwd=lab.root, env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = runs / "checkpoints" / "last.ckpt"
    while proc.poll() is None:
        if last.exists() and step_of(last) >= 30:
            time.sleep(1.0)  # a few steps past the validation at 30
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    if proc.returncode != -signal.SIGKILL:
        return False, f"the run ended (exit {proc.returncode}) before last.ckpt reached step 30"
    saved = step_of(last)
    resumed = lab.train(None, "trainer.max_steps=40", "trainer.val_check_interval=10", f"ckpt_path={last}")
    ok = saved == 30 and resumed.returncode == 0 and step_of(last) == 40
    return ok, f"killed past step 30: last.ckpt held step {saved}; the resumed run finished at step {step_of(last)}"


def killed_during_write(lab: Lab) -> Outcome:
    """kill -9 while a checkpoint file is being written, the run folder on a tmpfs (another file system than
    $TMPDIR); then read.py and test.py on the run folder, and a resume."""
    folder = lab.root / "mid-write"
    with small_file_system(folder, 1024) as mounted:
        run_dir = folder / "run"
        proc = subprocess.Popen(lab.train_command(run_dir, "trainer.max_steps=40"), cwd=lab.root, env=lab.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checkpoints = run_dir / "checkpoints"
        caught = None
        while proc.poll() is None:
            partial = list(checkpoints.glob(".*.partial")) if checkpoints.is_dir() else []
            if partial and (checkpoints / "last.ckpt").exists():  # a later write: there is a run to resume
                proc.send_signal(signal.SIGKILL)
                caught = partial[0].name
            time.sleep(0.005)
        good, bad = readable(checkpoints)
        orphans = [p.name for p in checkpoints.glob(".*.partial")]
        read = lab.run([sys.executable, str(REPO / "read.py"), str(run_dir), str(TEST_IMAGES / "demo_1.png")])
        tested = lab.run([sys.executable, str(REPO / "test.py"), str(run_dir), "--data_root", str(lab.data),
                          "--datasets", "SVT", "--num_workers", "0"])
        resumed = lab.train(None, "trainer.max_steps=40", f"ckpt_path={checkpoints / 'last.ckpt'}")
        left = [p.name for p in checkpoints.glob(".*.partial")]
    where = "tmpfs run folder" if mounted else "run folder on the working file system (no tmpfs without root)"
    stray = [p for p in (lab.root / "tmp").iterdir() if p.is_file()]  # what a move across file systems leaves
    ok = caught is not None and not bad and read.returncode == 0 and tested.returncode == 0 and \
        resumed.returncode == 0 and not left and not stray
    return ok, (f"{where}: killed while writing {caught}; {len(good)} checkpoints readable, {len(bad)} unreadable, "
                f"{len(orphans)} partial file; read.py and test.py on the folder: exit {read.returncode}, "
                f"{tested.returncode}; resumed: exit {resumed.returncode}, partial files left {len(left)}; files in "
                f"$TMPDIR: {len(stray)}")


def disk_full(lab: Lab) -> Outcome:
    """The run folder on a 128 MiB tmpfs: room for two 50 MiB checkpoints, not for a third being written."""
    folder = lab.root / "full"
    with small_file_system(folder, 128) as mounted:
        if not mounted:
            return True, "skipped: mounting a tmpfs needs root (tests/test_faults.py simulates it instead)"
        run_dir = folder / "run"
        proc = lab.train(run_dir, "trainer.max_steps=20")
        good, bad = readable(run_dir / "checkpoints")
        steps = {name: step_of(run_dir / "checkpoints" / name) for name in good}
        partial = list((run_dir / "checkpoints").glob(".*.partial"))
    message = error_line(proc)
    ok = proc.returncode == 1 and "CheckpointWriteError" in message and "needs" in message and good and not bad \
        and not partial
    return ok, f"exit {proc.returncode}: {shorten(message, 160)}; kept readable: {steps}; partial files: {len(partial)}"


def same_second(lab: Lab) -> Outcome:
    """Two runs started together with the default hydra.run.dir (one-second names)."""
    cwd = lab.root / "together"
    cwd.mkdir()
    command = lab.train_command(None, "trainer.max_steps=1")
    while time.time() % 1 > 0.2:  # start early in a second
        time.sleep(0.01)
    procs = [subprocess.Popen(command, cwd=cwd, env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    codes = [proc.wait(timeout=1200) for proc in procs]
    folders = sorted((cwd / "outputs" / "vl4str-tiny").iterdir())
    complete = [f.name for f in folders
                if (f / "config.yaml").is_file() and (f / "checkpoints" / "last.ckpt").is_file()]
    ok = codes == [0, 0] and len(complete) == 2
    return ok, f"exit {codes}; folders {', '.join(complete)}, each with its config.yaml and last.ckpt"


def diverging(lab: Lab) -> Outcome:
    """model.lr=1e6."""
    run_dir = lab.root / "nan"
    proc = lab.train(run_dir, "model.lr=1e6", "trainer.max_steps=40")
    broken = []
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        state_dict = safe_load(path)["state_dict"]
        broken += [path.name] if any(not torch.isfinite(t).all() for t in state_dict.values()
                                     if t.is_floating_point()) else []
    message = error_line(proc)
    ok = proc.returncode == 1 and message.startswith("NonFiniteTrainingError") and not broken
    return ok, f"exit {proc.returncode}: {shorten(message, 110)}; checkpoints with non-finite weights: {len(broken)}"


def undecodable_test_image(lab: Lab) -> Outcome:
    """test.py --batch_size 1 on an LMDB with one undecodable image out of eleven."""
    model = lab.root / "killed" / "checkpoints" / "last.ckpt"
    proc = lab.run([sys.executable, str(REPO / "test.py"), str(model), "--data_root", str(lab.data), "--datasets",
                    "SVT", "--batch_size", "1", "--num_workers", "0", "--device", "cpu"])
    row = next((line for line in proc.stdout.splitlines() if line.startswith("| SVT")), "|")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    ok = proc.returncode == 0 and "# skipped" in proc.stdout and cells[-1] == "1"
    return ok, f"exit {proc.returncode}; SVT row of the table: {cells[1]} samples evaluated, {cells[-1]} skipped"


def bad_input(lab: Lab) -> Outcome:
    """A text file, a truncated file and a plain state dict as ckpt_path=, a finished run resumed with a larger
    max_steps, model.batch_size=abc, and +model.<typo>=1 (refused with the closest name)."""
    last = lab.root / "killed" / "checkpoints" / "last.ckpt"
    text = lab.root / "downloads" / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    truncated = lab.root / "downloads" / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: 2**20])
    state_dict = lab.root / "downloads" / "weights.pt"
    torch.save(safe_load(last)["state_dict"], state_dict)
    cases = {
        "text file": lab.train(None, f"ckpt_path={text}"),
        "truncated file": lab.train(None, f"ckpt_path={truncated}"),
        "state dict": lab.train(None, f"ckpt_path={state_dict}"),
        "finished run, larger max_steps": lab.train(None, "trainer.max_steps=50", "trainer.val_check_interval=10",
                                                    f"ckpt_path={last}"),
        "model.batch_size=abc": lab.train(None, "model.batch_size=abc"),
        "+model.dropuot=0.2": lab.train(None, "+model.dropuot=0.2"),
    }
    lines = [f"{name}: {shorten(error_line(proc), 120)}" for name, proc in cases.items()]
    ok = all(proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr for proc in cases.values()) \
        and "did you mean 'model.dropout'" in error_line(cases["+model.dropuot=0.2"])
    return ok, " | ".join(lines)


SCENARIOS: Dict[str, Callable[[Lab], Outcome]] = {
    "1. hostile raw pickle on every load path": hostile_checkpoints,
    "2. kill -9 between checkpoint writes": killed_between_writes,
    "3. kill -9 during a checkpoint write": killed_during_write,
    "4. disk full during a save": disk_full,
    "5. two runs in the same second": same_second,
    "6. NaN loss (model.lr=1e6)": diverging,
    "7. undecodable test image, batch 1": undecodable_test_image,
    "8. bad resume and config input": bad_input,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="strhub-faults-"))
    lab = Lab(root.resolve())
    print(f"Working folder: {lab.root}", flush=True)
    lab.make_data()
    rows = []
    for name, scenario in SCENARIOS.items():
        start = time.monotonic()
        ok, outcome = scenario(lab)
        rows.append((name, "ok" if ok else "FAILED", outcome))
        print(f"{name}: {'ok' if ok else 'FAILED'} ({time.monotonic() - start:.0f} s)", flush=True)
    print("\n| Scenario | Result | Outcome |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    if not args.keep and args.workdir is None:
        shutil.rmtree(lab.root, ignore_errors=True)
    sys.exit(0 if all(row[1] == "ok" for row in rows) else 1)


if __name__ == "__main__":
    main()
