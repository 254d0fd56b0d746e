"""`bench.py memory`: the memory of a training step per GPU, estimated on the meta device and measured where the
device allows, and the largest batch for each GPU size (configs/bench.yaml: memory_budgets, memory_headroom)."""
import dataclasses

import torch
from omegaconf import DictConfig, OmegaConf

from strhub.host import GIB, available_memory, default_device
from strhub.training.planner import Planner, measure_step, plan_of
from strhub.training.run import world_size


def plan_memory(config: DictConfig) -> None:
    """Prints the estimated memory of a training step per GPU (for CUDA GPUs, or for `device` when one is given),
    a measured step where the device allows, and the largest batch for each of `memory_budgets`."""
    model = OmegaConf.to_container(config.model, resolve=True)
    plan = plan_of(model, config.trainer, world_size(config.trainer))
    device = default_device(config.device)
    planner = Planner(model, device_type=torch.device(config.device).type if config.device else "cuda")
    memory = planner.estimate(plan)
    print(f"Training step of {model['name']}: {plan.describe()}")
    print(f"Estimated per {'GPU' if planner.device_type == 'cuda' else planner.device_type} (meta device):")
    print("\n".join(memory.lines()))
    fits = device.type == planner.device_type and memory.total < available_memory(device)
    if config.measure is True or (config.measure == "auto" and fits and plan.world_size == 1):
        measured = measure_step(model, plan, str(device))
        print(f"Measured, one process on {device}: peak {measured['peak'] / GIB:.2f} GiB "
              f"({100 * (memory.total / measured['peak'] - 1):+.0f} % estimated), activations "
              f"{measured['activations'] / GIB:.2f} GiB "
              f"({100 * (memory.activations / measured['activations'] - 1):+.0f} "
              f"% estimated), {measured['seconds']:.2f} s per step")
    print(f"Largest batch per GPU (estimates, {100 * config.memory_headroom:.0f} % of each left free):")
    for checkpointing in (False, True):
        variant = dataclasses.replace(plan, grad_checkpointing=checkpointing, grad_checkpointing_decoder=checkpointing)
        sizes = [planner.largest_batch(variant, int(budget * GIB * (1 - config.memory_headroom)))
                 for budget in config.memory_budgets]
        print(f"  checkpointing {'on (encoder and decoder)' if checkpointing else 'off'}: " + ", ".join(
            f"{budget} GiB: {size}" for budget, size in zip(config.memory_budgets, sizes)))
