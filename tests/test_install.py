"""The installation: CI runs the documented commands, and scripts/system_packages.sh installs FriBiDi only where
Pillow lacks it, with sudo for a user who may, and otherwise names it in one line (run with stand-in commands)."""
import re
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system_packages.sh"


def commands(text: str) -> List[str]:
    """The command lines of a shell script: no comments, blank lines, `set` or `cd`."""
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def test_ci_runs_the_documented_install_and_test_commands() -> None:
    documented = re.search(r"```bash\n(.*?)```", (REPO / "docs" / "tests.md").read_text(encoding="utf-8"), re.S)
    assert commands((REPO / ".ci" / "run").read_text()) == commands(documented.group(1))


def fake_machine(tmp_path: Path, has_fribidi: bool, user: int, sudo: str) -> Path:
    """A folder of stand-ins for python (Pillow with or without FriBiDi), id, sudo and apt-get, and the only one on
    PATH (with env and touch), so that no real sudo or apt-get runs. apt-get records its calls (marked when sudo
    ran it) and "installs" FriBiDi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("env", "touch"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    scripts = {
        "python": f"[[ {int(has_fribidi)} == 1 || -e {tmp_path}/installed ]]",
        "id": f"echo {user}",
        "apt-get": f'echo "${{SUDO:-}}$*" >> {tmp_path}/apt.log; [[ $1 != install ]] || touch {tmp_path}/installed',
    }
    if sudo:
        scripts["sudo"] = {"allowed": '[[ $1 == -n ]] || exit 1; shift; SUDO="sudo " "$@"',
                           "password": 'echo "sudo: a password is required" >&2; exit 1'}[sudo]
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("has_fribidi, user, sudo, returncode, apt", [
    (True, 1000, "", 0, None),  # Pillow has it: nothing installed, no sudo asked
    (False, 0, "", 0, "update -qq\ninstall -y -qq libfribidi0\n"),  # root
    (False, 1000, "allowed", 0, "sudo update -qq\nsudo install -y -qq libfribidi0\n"),
    (False, 1000, "password", 1, None),  # sudo would ask for a password: the package is named instead
    (False, 1000, "", 1, None),  # no sudo at all
])
def test_system_packages_installs_fribidi_only_where_missing_and_allowed(tmp_path: Path, has_fribidi: bool,
                                                                          user: int, sudo: str, returncode: int,
                                                                          apt: str) -> None:
    bin_dir = fake_machine(tmp_path, has_fribidi, user, sudo)
    proc = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir)})
    assert proc.returncode == returncode, proc.stderr
    log = tmp_path / "apt.log"
    assert (log.read_text() if log.exists() else None) == apt
    if returncode:
        assert proc.stderr.count("\n") == 1 and "apt-get install libfribidi0" in proc.stderr, proc.stderr
    else:
        assert proc.stderr == ""
