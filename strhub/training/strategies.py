"""The Lightning strategy that `trainer.strategy` names, set up for the model being trained.

- `auto` / `ddp`: DDP with the model's `find_unused_parameters` as soon as more than one process trains.
- `fsdp`: Lightning's `FSDPStrategy` (PyTorch's FullyShardedDataParallel, with `use_orig_params=True`): every encoder
  block (`Recognizer.blocks()`, the units the models call as modules) is sharded on its own, the rest (decoders,
  embeddings, projections) forms the root unit. Checkpoints hold the full state dict, gathered on rank 0, so they load
  like any other. Lightning runs FSDP on CUDA GPUs only.
- `deepspeed_stage_2` (and Lightning's other DeepSpeed names) are refused: DeepSpeed writes its checkpoints as
  folders, past the atomic writer and the non-finite guard, and such a folder cannot be resumed; it cannot run on
  CPUs either, so it could not be tested to keep those promises. FSDP shards the same state and keeps them.
- Any other name goes to Lightning as it is.
"""
import os
from typing import Mapping, Union

import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, Strategy
from pytorch_lightning.utilities import rank_zero_only
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from strhub.keys import ConfigError
from strhub.models.base import PLMSystem


def check_strategy(name: str, accelerator: str) -> None:
    """Raises ConfigError, naming the key, when `trainer.strategy=name` cannot run here."""
    if name == "fsdp" and (accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())):
        raise ConfigError("trainer.strategy=fsdp needs CUDA GPUs: Lightning runs FSDP on GPUs only (on CPUs, train "
                          "with trainer.strategy=ddp)")
    if name.startswith("deepspeed"):
        raise ConfigError(f"trainer.strategy={name} is not supported: DeepSpeed writes checkpoints as folders, past "
                          f"the atomic writer and the non-finite guard, that cannot be resumed; shard with "
                          f"trainer.strategy=fsdp (CUDA GPUs) or train with trainer.strategy=ddp")


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


def mark_other_nodes(environ: Mapping[str, str] = os.environ) -> None:
    """Lightning takes a process's rank at import from RANK, LOCAL_RANK, SLURM_PROCID or JSM_NAMESPACE_RANK, so a node
    started with NODE_RANK > 0 alone (a hand-made launch: README, "Training on several machines") would count as rank
    0, claiming the run folder and writing its files, until the Trainer numbers it. Such a process is given the rank
    NODE_RANK until then: not its final number, but not 0, which is all `rank_zero_only` asks."""
    node = int(environ.get("NODE_RANK") or 0)
    if rank_zero_only.rank == 0 and node > 0:
        rank_zero_only.rank = node
