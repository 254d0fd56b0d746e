"""The machine's measured matrix-product rate in each precision, and the arithmetic of a model's pass, so that a
speed can be read as a fraction of what the hardware multiplies (`bench_speed.py` prints both).

    rates = matmul_rates("cpu")                 # {"32": 7.1e10, "bf16": 1.1e11, "int8": 2.5e11} per second
    flops = counted_flops(lambda: model.encode(images))
"""
import statistics
import time
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16, "int8": torch.int8}
MATMUL_SIZE = 2048  # large enough to run at a CPU's full rate, small enough to take well under a second


def matmul_rate(precision: str, device: Union[str, torch.device] = "cpu", size: int = MATMUL_SIZE,
                repeats: int = 5) -> float:
    """Multiply-adds x 2 per second of a (size x size) @ (size x size) product at `precision` (a key of `DTYPES`;
    int8 multiplies into int32 with `torch._int_mm`), the median of `repeats` after one warm-up."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    if precision == "int8":
        a, b = (torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=generator).to(device)
                for _ in range(2))
        product: Callable[[], torch.Tensor] = lambda: torch._int_mm(a, b)
    else:
        a, b = (torch.randn(size, size, generator=generator).to(device, DTYPES[precision]) for _ in range(2))
        product = lambda: a @ b
    seconds = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        product()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def matmul_rates(device: Union[str, torch.device] = "cpu", precisions: Sequence[str] = ("32", "bf16", "int8"),
                 rounds: int = 2) -> Dict[str, float]:
    """`matmul_rate` of each precision, the best of `rounds` interleaved rounds (A B C A B C: a busy machine
    slows them alike)."""
    rates: Dict[str, float] = {}
    for _ in range(rounds):
        for precision in precisions:
            rates[precision] = max(rates.get(precision, 0.0), matmul_rate(precision, device))
    return rates


class FlopCount(TorchDispatchMode):
    """Counts the operations of the matrix products, convolutions and attention run inside it, as torch's
    `FlopCounterMode` does, but without its module tracking (which fails in inference mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def counted_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (a multiply-add counts 2) of the matrix products, convolutions and attention
    that `fn` runs. It runs out of inference mode (with autograd as it was: off in inference mode), where linear
    layers reach the counter as the matrix products they are."""
    grad = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.set_grad_enabled(grad), FlopCount() as counter:
        fn()
    return counter.total


def describe_rates(rates: Dict[str, float]) -> str:
    """One line: each precision's rate in GFLOP/s (GOP/s for int8)."""
    return ", ".join(f"{precision_name(key)} {rate / 1e9:.0f} G{'OP' if key == 'int8' else 'FLOP'}/s"
                     for key, rate in rates.items())


def precision_name(precision: str) -> str:
    """fp32, bf16, fp16, int8."""
    return f"fp{precision}" if precision in ("32", "16") else precision
