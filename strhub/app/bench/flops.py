"""Parameters, FLOPs, latency (batch 1) and throughput of a model config, built with random weights so that
no CLIP or checkpoint file is needed; with memory=true, the memory of a training step per GPU (strhub.training.planner).
Configuration: configs/bench.yaml.

    python bench.py +experiment=vl4str-large device=cuda throughput_batch=128
    python bench.py +experiment=vl4str-huge memory=true model.batch_size=32 model.grad_checkpointing=true

Random weights rarely predict the end of a word early, so decoding tends to run all max_label_length + 1 steps:
the timings are an upper bound for a trained model. A key the config or the model does not take, and a device
that is not there, end it with one line naming them.
"""
import statistics
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from strhub.app.bench.memory import plan_memory
from strhub.app.overrides import check_command_line, check_sections
from strhub.config import CONFIG_DIR, register_resolvers
from strhub.host import autocast_context, default_device, reuse_freed_memory, timed
from strhub.keys import ConfigError
from strhub.models.registry import Family, without_weight_files

register_resolvers()


def seconds_per_call(model: torch.nn.Module, images: torch.Tensor, device: torch.device, min_run_time: float) -> float:
    """Median wall time of one forward pass, timed for at least `min_run_time` seconds."""
    return statistics.median(timed(lambda: model(images), device, warmup=1, repeats=3, min_seconds=min_run_time))


@hydra.main(config_path=str(CONFIG_DIR), config_name="bench", version_base="1.3")
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
    settings = OmegaConf.to_container(config.model, resolve=True)
    model = Family.of(settings).build({**settings, **without_weight_files(settings)}, system=True).eval().to(device)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    height, width = config.model.img_size
    single = torch.rand(1, 3, height, width, device=device)
    batch = torch.rand(config.throughput_batch, 3, height, width, device=device)
    with autocast_context(device, config.precision):
        with FlopCounterMode(display=False) as counter:
            model(single)
        latency = seconds_per_call(model, single, device, config.min_run_time)
        throughput = config.throughput_batch / seconds_per_call(model, batch, device, config.min_run_time)
    print(f"Model: {config.model.name}, input {height}x{width}, device {device}, precision {config.precision}, "
          f"random weights (no weight file is read)")
    print(f"Parameters: {total / 1e6:.2f} M total, {trainable / 1e6:.2f} M trainable")
    print(f"FLOPs (batch 1): {counter.get_total_flops() / 1e9:.2f} GFLOPs")
    print(f"Latency (batch 1): {1000 * latency:.2f} ms")
    print(f"Throughput (batch {config.throughput_batch}): {throughput:.1f} images/s")


def cli() -> None:
    """`bench.py [flops] OVERRIDES...`: the command line checked, then Hydra's main."""
    check_command_line("bench")
    main()
