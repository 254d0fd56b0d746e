"""The memory of a training step per GPU (parameters, gradients, optimizer state, activations) for a batch size,
precision and strategy, so that GPUs x batch x accumulation can be chosen before renting machines.

The estimate comes from the meta device: the model is built there (no memory, no arithmetic, so CLIP4STR-H plans on
any machine) and the forward pass of one training step runs on it while the tensors that autograd saves for the
backward pass are counted, each storage once and by the block or decoder layer that saved it. From that one pass
follow the activations with and without activation checkpointing: a checkpointed block keeps only its inputs, and the
backward pass recomputes one block at a time. Gradients and AdamW's two moments follow from the trainable parameters;
the strategy decides what each GPU holds. `measure_step` measures a real step where the device allows.
"""
import contextlib
import ctypes
import dataclasses
import gc
import multiprocessing as mp
import random
import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from strhub.cli import M_MMAP_THRESHOLD
from strhub.models.decoder import DecoderLayer

GIB = 2**30
# Lightning's precision names (and their short forms) -> the unified name.
PRECISIONS = {"32": "32-true", "32-true": "32-true", "16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed",
              "bf16-mixed": "bf16-mixed", "16-true": "16-true", "bf16-true": "bf16-true"}
# The strategy names training accepts -> how the planner shares the state out: replicated, or sharded (FSDP).
STRATEGIES = {"auto": "ddp", "ddp": "ddp", "ddp_spawn": "ddp", "fsdp": "fsdp"}
ENCODER, DECODER = "encoder", "decoder"


def unified_precision(precision: Any) -> str:
    """Lightning's unified precision name (`32-true`, `16-mixed`, ...) of a `trainer.precision` value."""
    if str(precision) not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[str(precision)]


def unified_strategy(strategy: Any) -> str:
    if str(strategy) not in STRATEGIES:
        raise ValueError(f"trainer.strategy={strategy!r}: memory is planned for {', '.join(STRATEGIES)}")
    return STRATEGIES[str(strategy)]


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the matrix products at `precision` (a unified name)."""
    return {"16": torch.float16, "bf16": torch.bfloat16}.get(precision.split("-")[0], torch.float32)


class DeviceEmulation(TorchFunctionMode):
    """What `device_type` does that the meta device does not, for the tensors it saves for the backward pass:

    - fused attention: CUDA always runs `scaled_dot_product_attention` in a fused kernel (it keeps the output and the
      log-sum-exp, not the L x L probabilities), a CPU whenever there is no dropout; the meta device never does;
    - autocast (when `dtype` is given), which leaves meta tensors alone: matrix products, convolutions and attention
      take 16-bit inputs (a parameter is cast once per step, as autocast caches it), and on CUDA normalisations,
      softmax and losses 32-bit ones (on a CPU only the losses); everything else runs in the dtype of its inputs.
      `copies` holds the parameters' casts.
    """

    LOWER = {F.linear, torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, torch.bmm, torch.addmm,
             torch.baddbmm, F.conv2d, F.scaled_dot_product_attention}
    FULL = {"cuda": {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.cross_entropy, Tensor.softmax,
                     Tensor.log_softmax},
            "cpu": {F.cross_entropy}}

    def __init__(self, dtype: Optional[torch.dtype], device_type: str = "cuda") -> None:
        super().__init__()
        self.dtype = dtype
        self.device_type = device_type
        self.full = self.FULL[device_type]
        self.copies: Dict[int, Tuple[Tensor, Tensor]] = {}

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Mapping[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if self.dtype is not None and func in self.LOWER:
            args, kwargs = tree_map(lambda value: self.cast(value, self.dtype), (args, kwargs))
        elif self.dtype is not None and func in self.full:
            args, kwargs = tree_map(lambda value: self.cast(value, torch.float32), (args, kwargs))
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        return func(*args, **kwargs)

    def attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
        if dropout_p and self.device_type == "cpu":
            return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)[0]

    def cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if not (value.is_leaf and value.requires_grad):
            return value.to(dtype)
        if id(value) not in self.copies:
            self.copies[id(value)] = (value, value.to(dtype))
        return self.copies[id(value)][1]


@dataclass
class Region:
    """One call of a block or decoder layer: the storages it saved first (its activations) and those it was given."""

    kind: str
    inputs: Set[StorageWeakRef] = field(default_factory=set)
    saved: Set[StorageWeakRef] = field(default_factory=set)


@dataclass
class Activations:
    """What a training step's forward pass saved for the backward pass: the bytes of each storage, those saved
    outside any block or decoder layer, each region's, and which storages are autocast's parameter copies."""

    sizes: Dict[StorageWeakRef, int]
    outside: Set[StorageWeakRef]
    regions: List[Region]
    copies: Set[StorageWeakRef]

    def kept(self, checkpointed: Set[str] = frozenset(), copies: bool = True) -> int:
        """The bytes kept from the forward pass to the backward pass when the regions of the kinds in `checkpointed`
        are recomputed (they keep their inputs, and one of them at a time is recomputed), without autocast's
        parameter copies unless `copies`."""
        dropped = set() if copies else self.copies
        kept = set(self.outside)
        recomputed = [region for region in self.regions if region.kind in checkpointed]
        for region in self.regions:
            if region.kind not in checkpointed:
                kept |= region.saved
        inputs = set().union(*(region.inputs for region in recomputed)) - kept
        largest = max((self.bytes(region.saved - dropped) for region in recomputed), default=0)
        return self.bytes((kept | inputs) - dropped) + largest

    def bytes(self, keys: Set[StorageWeakRef]) -> int:
        return sum(self.sizes[key] for key in keys if key in self.sizes)


@contextmanager
def saved_tensors(parameters: Sequence[Tensor], regions: Mapping[nn.Module, str]) -> Iterator[Activations]:
    """Counts the tensors that autograd saves inside the block: every storage once (parameters left out), by the
    call of one of the `regions` modules (module -> kind) that saved it first. The tensors are kept alive until the
    block ends, so that a storage is never taken for another one."""
    params = {StorageWeakRef(p.untyped_storage()) for p in parameters}
    activations = Activations({}, set(), [], set())
    stack: List[Region] = []
    alive: List[Tensor] = []

    def storages(values: Any) -> Set[StorageWeakRef]:
        tensors = [value for value in tree_flatten(values)[0] if isinstance(value, Tensor)]
        alive.extend(tensors)
        return {StorageWeakRef(t.untyped_storage()) for t in tensors} - params

    def pack(tensor: Tensor) -> Tensor:
        for key in storages(tensor):
            if key in activations.sizes:
                if not stack:
                    activations.outside.add(key)
                continue
            activations.sizes[key] = tensor.untyped_storage().nbytes()
            (stack[-1].saved if stack else activations.outside).add(key)
        return tensor

    def enter(module: nn.Module, args: Any, kwargs: Any) -> None:
        stack.append(Region(regions[module], storages((args, kwargs))))
        activations.regions.append(stack[-1])

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    with ExitStack() as hooks:
        for module in regions:
            hooks.enter_context(module.register_forward_pre_hook(enter, with_kwargs=True))
            hooks.enter_context(module.register_forward_hook(leave))
        hooks.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        yield activations
    for region in activations.regions:
        region.saved -= activations.outside


def training_labels(charset: str, count: int, length: int, seed: int = 0) -> List[str]:
    """`count` random labels of `length` characters of `charset` (the longest labels take the most memory)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(charset) for _ in range(length)) for _ in range(count)]


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of a system: all, trainable, and those outside the encoder blocks (FSDP's root unit, which
    stays gathered) and the largest block (gathered while it computes)."""

    total: int
    trainable: int
    root: int
    largest_block: int


def model_sizes(system: nn.Module) -> ModelSizes:
    blocks = system.model.blocks()
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    params = list(system.parameters())
    return ModelSizes(total=sum(p.numel() for p in params),
                      trainable=sum(p.numel() for p in params if p.requires_grad),
                      root=sum(p.numel() for p in params if id(p) not in in_blocks),
                      largest_block=max((sum(p.numel() for p in block.parameters()) for block in blocks), default=0))


def profile_activations(system: nn.Module, batch_size: int, precision: str, device_type: str = "cuda") -> Activations:
    """The activations of one training step of `system` (built on the meta device) at `batch_size` and `precision`
    (as `device_type` computes it), with activation checkpointing off (`Activations.kept` derives it on): labels as
    long as allowed."""
    model = system.model
    model.set_grad_checkpointing(False, False)
    height, width = system.hparams.img_size
    images = torch.empty(batch_size, 3, height, width, device="meta")
    labels = training_labels(system.hparams.charset_train, batch_size, system.hparams.max_label_length)
    tgt = system.tokenizer.encode(labels, images.device)
    regions = {**{block: ENCODER for block in model.blocks()},
               **{layer: DECODER for layer in model.modules() if isinstance(layer, DecoderLayer)}}
    dtype = compute_dtype(precision)
    if precision.endswith("-true"):
        system.to(dtype)
        images = images.to(dtype)
    emulation = DeviceEmulation(dtype if precision.endswith("-mixed") else None, device_type)
    with emulation, saved_tensors(list(system.parameters()), regions) as activations:
        system.train()
        system.permutation_step(images, tgt, system.gen_tgt_perms(tgt))
    system.to(torch.float32)
    activations.copies = {StorageWeakRef(copy.untyped_storage()) for _, copy in emulation.copies.values()}
    return activations


@dataclass(frozen=True)
class StepMemory:
    """The bytes one GPU holds at the peak of a training step. `gathered`: what FSDP gathers in full for the
    computation (the parameters and gradients outside the blocks, two blocks' parameters and one block's gradients).
    With `gradients_held`, the gradients live through the forward pass (DDP's buckets, ZeRO's partitions); otherwise
    they are freed by every `zero_grad` and the peak holds the activations or the gradients, whichever is larger."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    gathered: int = 0
    gradients_held: bool = True

    @property
    def total(self) -> int:
        step = self.gradients + self.activations if self.gradients_held else max(self.gradients, self.activations)
        return self.parameters + self.optimizer + self.gathered + step

    def lines(self) -> List[str]:
        gradients = "gradients" if self.gradients_held else "gradients (*)"
        parts = [("parameters", self.parameters), (gradients, self.gradients), ("optimizer state", self.optimizer),
                 ("activations", self.activations)] + ([("gathered (FSDP)", self.gathered)] if self.gathered else [])
        lines = [f"  {name:<16} {size / GIB:8.2f} GiB" for name, size in parts]
        lines.append(f"  {'peak':<16} {self.total / GIB:8.2f} GiB")
        if not self.gradients_held:
            lines.append("  (*) freed before each forward pass: the peak holds the activations or the gradients")
        return lines


@dataclass(frozen=True)
class TrainingPlan:
    """What the memory of a training step depends on, besides the model."""

    batch_size: int
    precision: str = "32-true"
    strategy: str = "ddp"
    world_size: int = 1
    grad_checkpointing: bool = False
    grad_checkpointing_decoder: bool = False

    def describe(self) -> str:
        checkpointed = [name for name, on in (("encoder", self.grad_checkpointing),
                                              ("decoder", self.grad_checkpointing_decoder)) if on]
        processes = f"{self.strategy} over {self.world_size} processes" if self.world_size > 1 else "one process"
        return (f"batch {self.batch_size} per GPU, precision {self.precision}, {processes}, activation checkpointing: "
                f"{' and '.join(checkpointed) or 'off'}")


def step_memory(sizes: ModelSizes, activations: Activations, plan: TrainingPlan) -> StepMemory:
    """The memory per GPU of a training step of a model of `sizes` whose forward saved `activations` (at the plan's
    batch size and precision). Parameters, gradients and AdamW's two moments are stored in 32 bits (in 16 bits at a
    `-true` precision); DDP gives every GPU all of them, FSDP (full sharding) a 1 / world-size shard of each plus
    what it gathers. A single process frees the gradients at every `zero_grad`."""
    compute = compute_dtype(plan.precision).itemsize
    stored = compute if plan.precision.endswith("-true") else 4
    world = plan.world_size
    checkpointed = {kind for kind, on in ((ENCODER, plan.grad_checkpointing),
                                          (DECODER, plan.grad_checkpointing_decoder)) if on}
    if plan.strategy == "fsdp":  # it shards a 32-bit copy at any precision, and computes on gathered copies
        kept = activations.kept(checkpointed, copies=False)
        gathered = (2 * sizes.root + 3 * sizes.largest_block) * compute
        return StepMemory(sizes.total * 4 // world, sizes.trainable * 4 // world, 2 * sizes.trainable * 4 // world,
                          kept, gathered)
    return StepMemory(sizes.total * stored, sizes.trainable * stored, 2 * sizes.trainable * stored,
                      activations.kept(checkpointed), gradients_held=world > 1)


def system_class(settings: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """The Lightning system class of a model config (importing it imports Lightning)."""
    from strhub.models.registry import family_of

    return family_of(settings).system_class()


def build_system(settings: Mapping[str, Any]) -> nn.Module:
    """The Lightning system of a model config (`configs/model/*.yaml` as composed, or `model_config(experiment)`),
    with random weights: no CLIP weight file is read."""
    from strhub.models.registry import without_weight_files

    values = {key: value for key, value in settings.items() if not key.startswith("_")}
    return system_class(settings)(**{**values, **without_weight_files(values)})


@dataclass
class Planner:
    """Plans the training memory of one model config at any batch size, from meta-device passes of its training
    step. Activations grow linearly with the batch, so the passes at `probe_batches` give them all."""

    settings: Mapping[str, Any]
    device_type: str = "cuda"
    probe_batches: Tuple[int, int] = (4, 8)
    _profiles: Dict[Tuple[int, str], Activations] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        with torch.device("meta"):
            self.system = build_system(self.settings)
        self.sizes = model_sizes(self.system)

    def activations(self, batch_size: int, precision: str) -> Activations:
        key = (batch_size, precision)
        if key not in self._profiles:
            self._profiles[key] = profile_activations(self.system, batch_size, precision, self.device_type)
        return self._profiles[key]

    def estimate(self, plan: TrainingPlan) -> StepMemory:
        """The plan's memory per GPU, from a meta-device pass at its batch size."""
        return step_memory(self.sizes, self.activations(plan.batch_size, plan.precision), plan)

    def interpolate(self, plan: TrainingPlan) -> StepMemory:
        """The plan's memory per GPU, its activations interpolated (or extrapolated) from the probe batches."""
        low, high = (self.estimate(dataclasses.replace(plan, batch_size=size)) for size in self.probe_batches)
        fraction = (plan.batch_size - self.probe_batches[0]) / (self.probe_batches[1] - self.probe_batches[0])
        activations = low.activations + fraction * (high.activations - low.activations)
        return dataclasses.replace(high, activations=round(activations))

    def largest_batch(self, plan: TrainingPlan, budget: int) -> int:
        """The largest per-GPU batch whose step fits `budget` bytes (0 when none does)."""
        def fits(size: int) -> bool:
            return self.interpolate(dataclasses.replace(plan, batch_size=size)).total <= budget

        low, high = 0, 1
        while fits(high):
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def plan_of(model: Mapping[str, Any], trainer: Mapping[str, Any], processes: int) -> TrainingPlan:
    """The training plan of `model` and `trainer` configs for `processes` processes in all."""
    return TrainingPlan(batch_size=int(model["batch_size"]), precision=unified_precision(trainer["precision"]),
                        strategy=unified_strategy(trainer["strategy"]),
                        world_size=processes, grad_checkpointing=bool(model.get("grad_checkpointing", False)),
                        grad_checkpointing_decoder=bool(model.get("grad_checkpointing_decoder", False)))


def training_plan_line(model: Mapping[str, Any], trainer: Mapping[str, Any], processes: int) -> str:
    """One line for a training log: the memory per GPU that the run is estimated to take."""
    try:
        plan = plan_of(model, trainer, processes)
    except ValueError as error:
        return f"Memory plan: none for {error}"
    memory = Planner(model).estimate(plan)
    parts = [("parameters", memory.parameters), ("gradients", memory.gradients), ("optimizer", memory.optimizer),
             ("activations", memory.activations), ("gathered", memory.gathered)]
    shown = ", ".join(f"{name} {size / GIB:.2f}" for name, size in parts if size)
    return f"Memory plan per GPU ({plan.describe()}), estimated: {shown}; peak {memory.total / GIB:.2f} GiB"


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


def follow_tensor_memory() -> None:
    """Has glibc's malloc give every block of 64 KiB or more a mapping of its own, returned to the system when freed,
    so that the resident set follows the tensors, as CUDA's allocated bytes do (by default malloc keeps freed blocks
    in its heap, where they fragment: the resident set then outgrows the tensors by a third at B/16's batch 8).
    A no-op where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def _measure(settings: Mapping[str, Any], plan: TrainingPlan, device_name: str, steps: int, queue: mp.Queue) -> None:
    follow_tensor_memory()
    device = torch.device(device_name)
    system_class(settings)  # imports Lightning before the baseline is taken
    baseline = 0 if device.type == "cuda" else resident_memory()
    torch.manual_seed(0)
    system = build_system({**settings, "grad_checkpointing": plan.grad_checkpointing,
                           "grad_checkpointing_decoder": plan.grad_checkpointing_decoder})
    dtype = compute_dtype(plan.precision)
    if plan.precision.endswith("-true"):
        system.to(dtype)
    system.to(device).train()
    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    height, width = system.hparams.img_size
    images = torch.randn(plan.batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    images = images.clamp(-1, 1).to(device, dtype if plan.precision.endswith("-true") else torch.float32)
    labels = training_labels(system.hparams.charset_train, plan.batch_size, system.hparams.max_label_length)
    tgt = system.tokenizer.encode(labels, device)
    autocast = torch.autocast(device.type, dtype, enabled=plan.precision.endswith("-mixed"))
    reset_peak_memory(device)
    seconds, activations = [], []
    for _ in range(steps):
        start = time.perf_counter()
        before = memory_in_use(device)
        with autocast:
            loss = system.permutation_step(images, tgt, system.gen_tgt_perms(tgt))
        activations.append(memory_in_use(device) - before)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 20.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    queue.put({"peak": peak_memory(device) - baseline, "seconds": statistics.median(seconds[1:] or seconds),
               "activations": statistics.median(activations)})


def measure_step(settings: Mapping[str, Any], plan: TrainingPlan, device: str, steps: int = 3) -> Dict[str, float]:
    """The peak memory of real training steps of one process (bytes; on a CPU the resident set above that of the
    process before the model was built), the median memory their forward passes leave for the backward pass
    (`activations`) and the median seconds of a step after the first, measured in a fresh process with random weights
    and random labels as long as allowed."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(dict(settings), plan, device, steps, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the measured training step failed (exit code {process.exitcode}); see the error above")
    return queue.get()
