"""The Lightning strategy that `trainer.strategy` names, set up for the model being trained.

- `auto` / `ddp`: DDP with the model's `find_unused_parameters` as soon as more than one process trains.
- `fsdp`: Lightning's `FSDPStrategy` (PyTorch's FullyShardedDataParallel, with `use_orig_params=True`): every encoder
  block (`Recognizer.blocks()`, the units the models call as modules) is sharded on its own, the rest (decoders,
  embeddings, projections) forms the root unit. Checkpoints hold the full state dict, gathered on rank 0, so they load
  like any other. Lightning runs FSDP on CUDA GPUs only.
- `deepspeed_stage_2` (and Lightning's other DeepSpeed names): where the deepspeed package is installed.
  Its checkpoints are folders; see docs/training.md for the command that turns one into a file.
- Any other name goes to Lightning as it is.
"""
import importlib.util
from typing import Union

import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from strhub.keys import ConfigError
from strhub.models.base import PLMSystem


def check_strategy(name: str, accelerator: str) -> None:
    """Raises ConfigError, naming the key, when `trainer.strategy=name` cannot run here."""
    if name == "fsdp" and (accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())):
        raise ConfigError("trainer.strategy=fsdp needs CUDA GPUs: Lightning runs FSDP on GPUs only (on CPUs, train "
                          "with trainer.strategy=ddp)")
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={name} needs the deepspeed package, which is not installed "
                          f"(pip install deepspeed, on a machine with CUDA)")


def block_wrap_policy(system: PLMSystem) -> ModuleWrapPolicy:
    """FSDP's auto-wrap policy: a unit of its own for every encoder block of the system's model."""
    return ModuleWrapPolicy({type(block) for block in system.model.blocks()})


def training_strategy(name: str, accelerator: str, processes: int, system: PLMSystem) -> Union[str, Strategy]:
    """The strategy `trainer.strategy=name` asks for, on `accelerator` with `processes` processes in all."""
    check_strategy(name, accelerator)
    if name in ("auto", "ddp") and processes > 1:
        return DDPStrategy(find_unused_parameters=getattr(system, "find_unused_parameters", False),
                           gradient_as_bucket_view=True)
    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy=block_wrap_policy(system), state_dict_type="full")
    return name
