#!/usr/bin/env python3
"""Parameters, FLOPs, latency (batch 1) and throughput of a model config, built with random weights so that
no CLIP or checkpoint file is needed. Configuration: configs/bench.yaml.

    python bench.py +experiment=vl4str-large device=cuda throughput_batch=128

Random weights rarely predict the end of a word early, so decoding tends to run all max_label_length + 1 steps:
the timings are an upper bound for a trained model. A key the config or the model does not take, and a device
that is not there, end it with one line naming them.
"""
import sys

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from strhub.cli import (autocast_context, check_command_line, check_sections, default_device, register_resolvers,
                        reuse_freed_memory)
from strhub.keys import ConfigError
from strhub.models.registry import without_weight_files

register_resolvers()


def seconds_per_call(model: torch.nn.Module, images: torch.Tensor, min_run_time: float) -> float:
    """Median wall time of one forward pass (CUDA is synchronised by the timer)."""
    from torch.utils.benchmark import Timer  # imported here: on a machine without CUDA, importing it logs a warning
    timer = Timer(stmt="model(images)", globals={"model": model, "images": images},
                  num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


@hydra.main(config_path="configs", config_name="bench", version_base="1.3")
@torch.inference_mode()
def main(config: DictConfig) -> None:
    try:
        check_sections(OmegaConf.to_container(config, resolve=True))
        device = default_device(config.device)
    except ConfigError as err:
        sys.exit(f"bench.py: error: {err}")
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
