"""Running the repository's command-line scripts in this process (their imports are already done), as a user runs
them, and reading what the user sees."""
import runpy
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


class Outcome(NamedTuple):
    status: int
    out: str
    err: str


def run_script(script: str, args: Sequence[object], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture) -> Outcome:
    """Runs `python <script> ARGS...` in this process: its exit status, stdout and stderr. An exception that
    escapes the script is what the user would see as a traceback: it is returned as status 99 with "Traceback" and
    the exception on stderr, so that the callers' assertions name it."""
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", [script, *map(str, args)])
        patch.syspath_prepend(str(REPO))  # as `python script.py` has it
        status, message = 0, ""
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
            message = f"{exit.code}\n" if isinstance(exit.code, str) else ""  # what Python prints for sys.exit(str)
        except Exception as error:  # noqa: BLE001 - what reaches the user as a traceback
            captured = capsys.readouterr()
            return Outcome(99, captured.out, f"{captured.err}Traceback: {type(error).__name__}: {error}")
    captured = capsys.readouterr()
    return Outcome(status, captured.out, captured.err + message)


def one_line_error(outcome: Outcome) -> str:
    """The error a refused command printed: exactly one line of stderr that says `error:`, and no traceback."""
    assert outcome.status not in (0, 99), outcome
    assert "Traceback" not in outcome.err, outcome.err
    errors = [line for line in outcome.err.splitlines() if "error:" in line]
    assert len(errors) == 1, outcome.err
    return errors[0]
