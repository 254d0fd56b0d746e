#!/usr/bin/env python3
"""Two CPU processes (gloo) train the tiny CLIP4STR for two steps, sharded or replicated, and save a checkpoint;
rank 0 then checks it against the live model and writes what it found to RESULT (JSON):

    python tests/two_processes.py ddp RESULT     # Lightning's DDP, as train.py sets it up
    python tests/two_processes.py fsdp RESULT    # PyTorch's FSDP2 (fully_shard), one unit per encoder block

Lightning's FSDPStrategy (FSDP1) runs on GPUs only, and FSDP1 itself refuses a machine without an accelerator, so
the fsdp run shards with FSDP2, which runs on CPUs (gloo), over the same units as the strategy's auto-wrap policy
(`Recognizer.blocks()`: the towers call them as modules, so the sharded parameters are gathered around each use),
and saves the full state dict, as the strategy does.
`logits_difference`: the largest difference between the logits of the live model and of `load_model(checkpoint)`.
With fsdp also `loss_difference` and `weight_difference`: the sharded step (one SGD step) against the same step
unsharded.
"""
import json
import os
import sys
from pathlib import Path
from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from strhub.models.checkpoint import load_model
from strhub.models.utils import create_model
from strhub.training.planner import training_labels

BATCH = 4


def batch() -> Tuple[Tensor, List[str]]:
    images = torch.rand(BATCH, 3, 32, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return images, training_labels("abcdefghij", BATCH, 6, seed=1)


def logits_difference(live: torch.nn.Module, path: Path) -> float:
    images = batch()[0]
    with torch.no_grad():
        return float((live(images) - load_model(path).eval()(images)).abs().max())


def run_ddp(result: Path) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from strhub.training.strategies import training_strategy

    torch.manual_seed(0)
    system = create_model("tiny", dropout=0.0, batch_size=BATCH)
    images, labels = batch()
    loader = DataLoader(list(zip(images, labels)), batch_size=BATCH // 2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=training_strategy("ddp", "cpu", 2, system),
                         max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(system, loader)
    path = result.with_suffix(".ckpt")
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        result.write_text(json.dumps({"logits_difference": logits_difference(system.model.eval(), path)}))


class TrainingLoss(torch.nn.Module):
    """The training loss of a system as a module's forward, which FSDP wraps (as Lightning wraps training_step)."""

    def __init__(self, system: torch.nn.Module) -> None:
        super().__init__()
        self.system = system

    def forward(self, images: Tensor, tgt: Tensor, perms: Tensor) -> Tensor:
        return self.system.permutation_step(images, tgt, perms)


def fsdp_rank(rank: int, result: Path, port: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    images, labels = batch()
    torch.manual_seed(0)
    reference = create_model("tiny", dropout=0.0)
    sharded = create_model("tiny", dropout=0.0)
    sharded.load_state_dict(reference.state_dict())
    mesh = init_device_mesh("cpu", (2,))
    for block in sharded.model.blocks():
        fully_shard(block, mesh=mesh)
    scalars = {p for p in sharded.parameters() if p.dim() == 0}  # CLIP's logit_scale, unused: FSDP2 shards none
    wrapped = fully_shard(TrainingLoss(sharded), mesh=mesh, ignored_params=scalars)
    tgt = reference.tokenizer.encode(labels)
    perms = reference.gen_tgt_perms(tgt)
    expected = reference.permutation_step(images, tgt, perms)
    expected.backward()
    loss = wrapped(images, tgt, perms)
    loss.backward()
    for module in (reference, wrapped):
        torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1).step()
    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state_dict = {name.removeprefix("system."): value for name, value in full.items()}
    if rank == 0:
        path = result.with_suffix(".ckpt")
        torch.save({"state_dict": state_dict, "hyper_parameters": dict(reference.hparams)}, path)
        weights = reference.state_dict()
        result.write_text(json.dumps({
            "logits_difference": logits_difference(reference.model.eval(), path),
            "loss_difference": abs(float(expected.detach()) - float(loss.detach())),
            "weight_difference": max(float((weights[name] - value).abs().max()) for name, value in state_dict.items()),
            "same_keys": sorted(state_dict) == sorted(weights)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    kind, result_path = sys.argv[1], Path(sys.argv[2])
    if kind == "ddp":
        run_ddp(result_path)
    else:
        mp.spawn(fsdp_rank, args=(result_path, 29400 + os.getpid() % 500), nprocs=2)
