"""The package as a user installs it: a wheel built from the source, installed into a fresh virtual environment
(beside this interpreter's packages, so that nothing is downloaded) and used from a folder that holds nothing of
the repository: render words, train the tiny config for a few steps, test and read with the result (with the
console scripts and with `python -m`)."""
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a build reads: the packaging files, the package and the configs (not tests, data, outputs or .git).
SOURCE = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "requirements.txt", "README.md", "LICENSE",
          "strhub", "configs")


def run(args: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the source (a build in the repository would leave build/ there)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCE:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.is_file():
            shutil.copy(path, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", source, "-w",
         tmp_path / "dist"], tmp_path, dict(os.environ))
    (wheel,) = (tmp_path / "dist").glob("strhub-*.whl")
    return wheel


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_trains_tests_and_reads_from_any_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"strhub/configs/main.yaml", "strhub/configs/experiment/tiny.yaml",
            "strhub/tools/fonts/wqy-microhei-subset.ttf", "strhub/tools/fonts/LICENSE-wqy-microhei.txt"} <= names
    assert not any(name.startswith(("tests/", "configs/")) for name in names)

    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path, env)
    bin_dir = venv / "bin"
    # --system-site-packages reaches the base interpreter's packages; where the tests run in a virtual environment,
    # the requirements are in that one: its site-packages follow the new venv's own (their .pth files unread, so an
    # editable strhub there stays out of the way).
    (site_packages,) = venv.glob("lib/python*/site-packages")
    (site_packages / "requirements.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # --force-reinstall: this interpreter may have strhub installed (editable) already; the venv gets its own copy.
    run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel],
        tmp_path, env)
    work = tmp_path / "work"  # nothing of the repository here
    work.mkdir()
    where = run([bin_dir / "python", "-c", "import strhub; print(strhub.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    run([bin_dir / "strhub-render-words", "data", "--train", "32", "--val", "16", "--test", "8", "--charset", "36",
         "--seed", "1"], work, env)
    run([bin_dir / "strhub-train", "+experiment=tiny", "dataset=custom", "data.root_dir=data", "data.num_workers=0",
         "model.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
         "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "hydra.run.dir=run"],
        work, env)
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file()
    tested = run([bin_dir / "strhub-test", "run", "--data_root", "data", "--datasets", "synth", "--device", "cpu",
                  "--num_workers", "0"], work, env)
    assert "| synth    |         8 |" in tested.stdout, tested.stdout
    image = shutil.copy(REPO / "misc" / "test_images" / "demo_1.png", work / "demo_1.png")
    read = run([bin_dir / "strhub-read", "run", image, "--device", "cpu"], work, env)
    assert read.stdout.startswith(f"{image}: "), read.stdout
    module = run([bin_dir / "python", "-m", "strhub.app.read", "run/checkpoints/last.ckpt", image, "--device", "cpu"],
                 work, env)
    assert module.stdout == read.stdout
