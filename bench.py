#!/usr/bin/env python3
"""Parameters, FLOPs, latency (batch 1) and throughput of a model config, built with random weights so that
no CLIP or checkpoint file is needed; with memory=true, the memory of a training step per GPU (strhub.memory).
Configuration: configs/bench.yaml.

    python bench.py +experiment=vl4str-large device=cuda throughput_batch=128
    python bench.py +experiment=vl4str-huge memory=true model.batch_size=32 model.grad_checkpointing=true

Random weights rarely predict the end of a word early, so decoding tends to run all max_label_length + 1 steps:
the timings are an upper bound for a trained model. A key the config or the model does not take, and a device
that is not there, end it with one line naming them.
"""
import dataclasses
import sys

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from strhub.cli import (autocast_context, check_command_line, check_sections, default_device, register_resolvers,
                        reuse_freed_memory, world_size)
from strhub.keys import ConfigError
from strhub.memory import GIB, Planner, available_memory, measure_step, plan_of
from strhub.models.registry import without_weight_files

register_resolvers()


def seconds_per_call(model: torch.nn.Module, images: torch.Tensor, min_run_time: float) -> float:
    """Median wall time of one forward pass (CUDA is synchronised by the timer)."""
    from torch.utils.benchmark import Timer  # imported here: on a machine without CUDA, importing it logs a warning
    timer = Timer(stmt="model(images)", globals={"model": model, "images": images},
                  num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


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
              f"{measured['activations'] / GIB:.2f} GiB ({100 * (memory.activations / measured['activations'] - 1):+.0f} "
              f"% estimated), {measured['seconds']:.2f} s per step")
    print(f"Largest batch per GPU (estimates, {100 * config.memory_headroom:.0f} % of each left free):")
    for checkpointing in (False, True):
        variant = dataclasses.replace(plan, grad_checkpointing=checkpointing, grad_checkpointing_decoder=checkpointing)
        sizes = [planner.largest_batch(variant, int(budget * GIB * (1 - config.memory_headroom)))
                 for budget in config.memory_budgets]
        print(f"  checkpointing {'on (encoder and decoder)' if checkpointing else 'off'}: " + ", ".join(
            f"{budget} GiB: {size}" for budget, size in zip(config.memory_budgets, sizes)))


@hydra.main(config_path="configs", config_name="bench", version_base="1.3")
def main(config: DictConfig) -> None:
    try:
        check_sections(OmegaConf.to_container(config, resolve=True))
        default_device(config.device)
    except ConfigError as err:
        sys.exit(f"bench.py: error: {err}")
    if config.memory:
        plan_memory(config)
    else:
        benchmark(config)


@torch.inference_mode()
def benchmark(config: DictConfig) -> None:
    device = default_device(config.device)
    reuse_freed_memory()
    model = instantiate(config.model, **without_weight_files(config.model)).eval().to(device)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    height, width = config.model.img_size
    single = torch.rand(1, 3, height, width, device=device)
    batch = torch.rand(config.throughput_batch, 3, height, width, device=device)
    with autocast_context(device, config.precision):
        with FlopCounterMode(display=False) as counter:
            model(single)
        latency = seconds_per_call(model, single, config.min_run_time)
        throughput = config.throughput_batch / seconds_per_call(model, batch, config.min_run_time)
    print(f"Model: {config.model.name}, input {height}x{width}, device {device}, precision {config.precision}, "
          f"random weights (no weight file is read)")
    print(f"Parameters: {total / 1e6:.2f} M total, {trainable / 1e6:.2f} M trainable")
    print(f"FLOPs (batch 1): {counter.get_total_flops() / 1e9:.2f} GFLOPs")
    print(f"Latency (batch 1): {1000 * latency:.2f} ms")
    print(f"Throughput (batch {config.throughput_batch}): {throughput:.1f} images/s")


if __name__ == "__main__":
    check_command_line("bench")
    main()
