"""Deterministic faults in the files a process writes under a `checkpoints/` folder, for the tests: `inject` installs
them in this process; run as a script, it runs train.py with them.

    python tests/faults.py [--cross-device] [--kill-at-write N | --full-at-write N] [--start-at T] -- ARGS...

--cross-device      renames between two folders fail with EXDEV, as across file systems, so a move becomes a copy
--kill-at-write N   the process kills itself (SIGKILL) after writing 1 MiB of the N-th file under checkpoints/
--full-at-write N   the N-th such file and every later one fail after 1 MiB with ENOSPC, as on a full disk
--start-at T        train.py starts at time T (seconds since the epoch) and `time.strftime` keeps telling that
                    second, so that runs given the same T take their default run folder names in the same second
"""
import argparse
import builtins
import errno
import io
import os
import runpy
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]
WRITTEN_BEFORE_FAULT = 2**20


class FaultyFile:
    """A file open for writing that fails (kills the process, or raises ENOSPC) once `limit` bytes are written."""

    def __init__(self, file: Any, limit: Optional[int], fault: Callable[[], None]) -> None:
        self.file, self.limit, self.fault, self.written = file, limit, fault, 0

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        if self.limit is not None and self.written + len(data) > self.limit:
            self.file.write(data[:self.limit - self.written])
            self.file.flush()
            self.written = self.limit
            self.fault()
        self.written += len(data)
        return self.file.write(data)

    def __enter__(self) -> "FaultyFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def inject(cross_device: bool = False, kill_at_write: Optional[int] = None,
           full_at_write: Optional[int] = None) -> None:
    """Installs the faults in this process (see the module docstring)."""
    real_open, real_rename, real_replace = builtins.open, os.rename, os.replace
    opened: List[str] = []

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or not set(mode) & set("wxa") or "checkpoints" not in Path(os.fsdecode(file)).parts:
            return handle
        opened.append(str(file))
        if kill_at_write == len(opened):
            return FaultyFile(handle, WRITTEN_BEFORE_FAULT, lambda: os.kill(os.getpid(), signal.SIGKILL))
        if full_at_write is not None and len(opened) >= full_at_write:
            return FaultyFile(handle, WRITTEN_BEFORE_FAULT, disk_full)
        return handle

    def across(real: Callable[..., Any]) -> Callable[..., Any]:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(src).absolute().parent != Path(dst).absolute().parent:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            return real(src, dst, *args, **kwargs)
        return rename

    builtins.open = io.open = faulty_open
    if cross_device:
        os.rename, os.replace = across(real_rename), across(real_replace)
        shutil._USE_CP_SENDFILE = False  # copies then go through Python file writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cross-device", action="store_true")
    parser.add_argument("--kill-at-write", type=int)
    parser.add_argument("--full-at-write", type=int)
    parser.add_argument("--start-at", type=int)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.start_at is not None:
        import hydra  # noqa: F401 - the slow imports come first, so that the starts line up
        import pytorch_lightning  # noqa: F401

        import strhub.evaluation.evaluate  # noqa: F401

        time.sleep(max(0.0, args.start_at - time.time()))
        started, real_strftime = time.localtime(args.start_at), time.strftime
        time.strftime = lambda format, t=None: real_strftime(format, started if t is None else t)
    inject(args.cross_device, args.kill_at_write, args.full_at_write)
    sys.argv = [str(REPO / "train.py"), *[a for a in args.train_args if a != "--"]]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
