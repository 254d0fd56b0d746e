"""The machine a run is on: its CPUs and devices, the inference precision, the C library's memory handling, memory
readings, the one timer of the project, and folders written whole or not at all. Imports torch, nothing of
Lightning or of strhub above it."""
import contextlib
import ctypes
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Union

import torch

from strhub.keys import ConfigError

GIB = 2**30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
PRECISIONS = ("32", "bf16", "16")
INFERENCE_PRECISIONS = ("auto", *PRECISIONS)  # what the entry points take: auto picks (see `choose_precision`)
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that multiply bfloat16 natively
CPUINFO = Path("/proc/cpuinfo")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def worker_count(at_most: int) -> int:
    """Data-loading worker processes: `at_most`, and no more than the usable CPUs (more would only compete with
    the main process, and PyTorch warns about them)."""
    return max(0, min(at_most, usable_cpus()))


def default_device(device: Optional[str] = None) -> torch.device:
    """`device`, or else the GPU when there is one, or else the CPU. A device torch cannot name, or a CUDA device
    where torch sees no such GPU, is a ConfigError of one line."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not a torch device: {err}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                          f"False); use the cpu device")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    return chosen


def autocast_context(device: Union[str, torch.device], precision: str = "32") -> contextlib.AbstractContextManager:
    """Autocast for inference at `precision` ('32', 'bf16' or '16') on `device`."""
    dtypes = {"bf16": torch.bfloat16, "16": torch.float16}
    if precision == "32":
        return contextlib.nullcontext()
    if precision not in dtypes:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=dtypes[precision])


def native_bf16(device: Union[str, torch.device]) -> Optional[str]:
    """Why `device` multiplies bfloat16 natively (a GPU that supports it, or a CPU flag), or None."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} supports bfloat16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    try:
        flags = set(CPUINFO.read_text().split())
    except OSError:  # no /proc (macOS, Windows): no way to tell, so float32
        return None
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return f"the CPU has {' and '.join(found)}" if found else None


def choose_precision(precision: str, device: Union[str, torch.device], announce: bool = True) -> str:
    """The inference precision that `precision` names on `device`: `auto` is bf16 where the device multiplies
    bfloat16 natively (`native_bf16`), else 32, and says which on stderr when `announce`; others are kept."""
    if precision != "auto":
        return precision
    reason = native_bf16(device)
    chosen = "bf16" if reason else "32"
    if announce:
        print(f"--precision auto: {chosen} ({reason or f'no native bfloat16 on {torch.device(device).type}'})",
              file=sys.stderr)
    return chosen


def inference_precision(model: torch.nn.Module, device: Union[str, torch.device],
                        precision: str) -> contextlib.AbstractContextManager:
    """Readies `model` (a Recognizer, or a system that holds one as `model`) for inference at `precision` and
    returns the context to run it in: bf16 stores the weights in bfloat16 once (`Recognizer.cast_for_inference`,
    no autocast), 16 autocasts, 32 changes nothing."""
    if precision == "bf16":
        getattr(model, "model", model).cast_for_inference(torch.bfloat16)
        return contextlib.nullcontext()
    return autocast_context(device, precision)


def reuse_freed_memory() -> None:
    """Has glibc's malloc keep freed blocks of up to 32 MiB for reuse rather than hand them back to
    the system, so that each forward pass does not page-fault its activations in afresh (about 5%
    of CPU inference time). The peak memory is unchanged; a no-op where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)


def follow_tensor_memory() -> None:
    """Has glibc's malloc give every block of 64 KiB or more a mapping of its own, returned to the system when freed,
    so that the resident set follows the tensors, as CUDA's allocated bytes do (by default malloc keeps freed blocks
    in its heap, where they fragment: the resident set then outgrows the tensors by a third at B/16's batch 8).
    A no-op where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def return_freed_memory() -> None:
    """Hands memory freed by Python and PyTorch back to the system (glibc would keep it in the heap)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resident_memory(field_name: str = "VmRSS") -> int:
    """A line of /proc/self/status in bytes: VmRSS (resident now) or VmHWM (its high-water mark)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name} line")


def available_memory(device: torch.device) -> int:
    """Bytes free for a new process's tensors: on a CUDA device, its free memory; on a CPU, the system's
    MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def reset_peak_memory(device: torch.device) -> None:
    """Starts the peak-memory count afresh (CUDA's allocator statistics, or the process's VmHWM)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")


def peak_memory(device: torch.device) -> int:
    """Bytes at the peak since `reset_peak_memory`: CUDA's allocated tensors, or the process's resident set."""
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else resident_memory("VmHWM")


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: CUDA's allocated tensors, or the process's resident set."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_memory()


def synchronize(device: Union[str, torch.device]) -> None:
    """Waits for the device's queued work (a no-op on a CPU), so that a clock read after it counts that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Union[str, torch.device], warmup: int = 1, repeats: int = 5,
          min_seconds: float = 0.0) -> List[float]:
    """Seconds of each run of `fn` after `warmup` runs: `repeats` runs, and more until they add up to
    `min_seconds`. The device is synchronised after each run."""
    times: List[float] = []
    for _ in range(warmup):
        fn()
    synchronize(device)
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def atomic_directory(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh hidden directory beside `output` to fill; when the block ends without an error it takes
    `output`'s place (a previous `output` is removed only then, and only with `overwrite`), otherwise it is
    deleted. A crash therefore never leaves a partial result under the final name."""
    output = Path(output)
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists; remove it or pass overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield partial
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            output.rename(old / output.name)
            partial.rename(output)
            shutil.rmtree(old)
        else:
            partial.rename(output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
