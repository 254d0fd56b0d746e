"""The one measurement of real training steps: a step (forward, backward, clipping, AdamW) on fixed inputs, timed,
with the memory its forward pass leaves for the backward pass and the peak, run in a fresh process so that the
peak memory is its own. The memory planner (`bench.py memory`) and the speed benchmark (`bench.py speed`) use it."""
import contextlib
import multiprocessing as mp
import random
import statistics
from queue import Empty
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from strhub.host import memory_in_use, peak_memory, reset_peak_memory, timed


def training_labels(charset: str, count: int, max_length: int, seed: int = 0,
                    lengths: Optional[Sequence[int]] = None) -> List[str]:
    """`count` random labels over `charset`: of 1 to `max_length` characters, the first one as long as allowed; or,
    given `lengths`, as long as lengths drawn from them (at most `max_length`; `[max_length]`: all as long as
    allowed, which takes the most memory)."""
    rng = random.Random(seed)
    if lengths:
        sizes = [min(rng.choice(lengths), max_length) for _ in range(count)]
    else:
        sizes = [max_length] + [rng.randint(1, max_length) for _ in range(count - 1)]
    return ["".join(rng.choice(charset) for _ in range(size)) for size in sizes]


class TrainingStep:
    """One optimizer step of a Lightning system on fixed images and labels: the permutation loss under `autocast`,
    backward, gradient clipping at 20 and fused AdamW, as training runs it."""

    def __init__(self, system: nn.Module, images: Tensor, labels: List[str],
                 autocast: Optional[contextlib.AbstractContextManager] = None) -> None:
        self.system, self.images = system, images
        self.targets = system.tokenizer.encode(labels, images.device)
        self.autocast = autocast or contextlib.nullcontext()
        self.params = [p for p in system.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, fused=images.device.type in ("cuda", "cpu"))
        self.activations: List[int] = []

    def __call__(self) -> None:
        before = memory_in_use(self.images.device)
        with self.autocast:
            loss = self.system.permutation_step(self.images, self.targets, self.system.gen_tgt_perms(self.targets))
        self.activations.append(memory_in_use(self.images.device) - before)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 20.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def measure(self, device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
        """The median seconds of `repeats` steps after `warmup` ones, the median memory a forward pass leaves for
        the backward pass (`activations`, bytes) and the peak memory since the first step (bytes)."""
        reset_peak_memory(device)
        seconds = timed(self, device, warmup, max(repeats, 1))
        return {"seconds": statistics.median(seconds), "activations": statistics.median(self.activations),
                "peak": peak_memory(device)}


def _child(target: Callable[..., Dict[str, Any]], args: Sequence[Any], queue: mp.Queue) -> None:
    queue.put(target(*args))


def run_in_fresh_process(target: Callable[..., Dict[str, Any]], *args: Any) -> Dict[str, Any]:
    """`target(*args)` (a module-level function) run in a new process, its result returned; a process that ends
    without one ends the measurement with a RuntimeError (its own error is printed above)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the measurement ended without a result (exit code {process.exitcode}; its "
                                   f"error is printed above)") from None
    process.join()
    return result
