"""The memory of a training step per GPU (parameters, gradients, optimizer state, activations) for a batch size,
precision and strategy, so that GPUs x batch x accumulation can be chosen before renting machines.

The activations come from a meta-device pass of the training step (`strhub.training.profile`); gradients and
AdamW's two moments follow from the trainable parameters; the strategy decides what each GPU holds.
`measure_step` measures a real step where the device allows.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from strhub.host import GIB, follow_tensor_memory, resident_memory
from strhub.models.registry import Family, without_weight_files
from strhub.training.measure import TrainingStep, run_in_fresh_process, training_labels
from strhub.training.profile import DECODER, ENCODER, Activations, compute_dtype, profile_activations

# Lightning's precision names (and their short forms) -> the unified name.
PRECISIONS = {"32": "32-true", "32-true": "32-true", "16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed",
              "bf16-mixed": "bf16-mixed", "16-true": "16-true", "bf16-true": "bf16-true"}
# The strategy names training accepts -> how the planner shares the state out: replicated, or sharded (FSDP).
STRATEGIES = {"auto": "ddp", "ddp": "ddp", "ddp_spawn": "ddp", "fsdp": "fsdp"}


def unified_precision(precision: Any) -> str:
    """Lightning's unified precision name (`32-true`, `16-mixed`, ...) of a `trainer.precision` value."""
    if str(precision) not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[str(precision)]


def unified_strategy(strategy: Any) -> str:
    if str(strategy) not in STRATEGIES:
        raise ValueError(f"trainer.strategy={strategy!r}: memory is planned for {', '.join(STRATEGIES)}")
    return STRATEGIES[str(strategy)]


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


def build_system(settings: Mapping[str, Any]) -> nn.Module:
    """The Lightning system of a model config (`configs/model/*.yaml` as composed, or `model_config(experiment)`),
    with random weights: no CLIP weight file is read."""
    return Family.of(settings).build({**settings, **without_weight_files(settings)}, system=True)


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



def _measure_plan(settings: Mapping[str, Any], plan: TrainingPlan, device_name: str, steps: int) -> Dict[str, float]:
    follow_tensor_memory()
    device = torch.device(device_name)
    Family.of(settings).system_class()  # imports Lightning before the baseline is taken
    baseline = 0 if device.type == "cuda" else resident_memory()
    torch.manual_seed(0)
    system = build_system({**settings, "grad_checkpointing": plan.grad_checkpointing,
                           "grad_checkpointing_decoder": plan.grad_checkpointing_decoder})
    dtype = compute_dtype(plan.precision)
    true_precision = plan.precision.endswith("-true")
    if true_precision:
        system.to(dtype)
    system.to(device).train()
    height, width = system.hparams.img_size
    images = torch.randn(plan.batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    images = images.clamp(-1, 1).to(device, dtype if true_precision else torch.float32)
    length = system.hparams.max_label_length
    labels = training_labels(system.hparams.charset_train, plan.batch_size, length, lengths=[length])
    autocast = torch.autocast(device.type, dtype, enabled=plan.precision.endswith("-mixed"))
    result = TrainingStep(system, images, labels, autocast).measure(device, warmup=1, repeats=steps - 1)
    return {**result, "peak": result["peak"] - baseline}


def measure_step(settings: Mapping[str, Any], plan: TrainingPlan, device: str, steps: int = 3) -> Dict[str, float]:
    """The peak memory of real training steps of one process (bytes; on a CPU the resident set above that of the
    process before the model was built), the median memory their forward passes leave for the backward pass
    (`activations`) and the median seconds of a step after the first, measured in a fresh process with random weights
    and random labels as long as allowed."""
    return run_in_fresh_process(_measure_plan, dict(settings), plan, device, steps)
