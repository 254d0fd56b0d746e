#!/usr/bin/env python3
"""Trains CLIP4STR. Configuration: configs/main.yaml and its groups; every key can be overridden, e.g.

    python train.py +experiment=vl4str data.root_dir=/data/str_dataset trainer.devices=4 model.batch_size=256 \
        model.clip_pretrained=pretrained/clip/ViT-B-16.pt

Outputs go to outputs/<model>/<date>_<time>/: checkpoints/ (best by val_accuracy, and last.ckpt), TensorBoard
and CSV logs, and config.yaml (the resolved configuration). Resume with ckpt_path=<run>/checkpoints/last.ckpt.
"""
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.strategies import DDPStrategy, Strategy
from pytorch_lightning.utilities import rank_zero_only

from strhub.cli import register_resolvers, reuse_freed_memory
from strhub.evaluate import evaluate_checkpoint
from strhub.models.registry import without_weight_files
from strhub.models.utils import load_weights

log = logging.getLogger(__name__)

register_resolvers()


def world_size(trainer: DictConfig) -> int:
    """Number of training processes: devices per node (resolved as Lightning does) times nodes."""
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        uses_gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if uses_gpu else 1
    elif isinstance(devices, (list, ListConfig)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    else:
        per_node = int(devices)
    return per_node * int(trainer.get("num_nodes", 1))


def scale_steps(trainer: DictConfig, processes: int) -> None:
    """Divides the step-based settings by the number of processes, as the original does by its GPUs."""
    if isinstance(trainer.val_check_interval, int):
        trainer.val_check_interval = max(1, trainer.val_check_interval // processes)
    if trainer.get("max_steps", -1) > 0:
        trainer.max_steps = max(1, trainer.max_steps // processes)


def build_model(config: DictConfig) -> pl.LightningModule:
    """The system of `config.model`; with `pretrained`, its CLIP is built from `model.clip_arch` (no CLIP weight
    file needed) and every weight is then loaded from that checkpoint."""
    if config.pretrained is None:
        return instantiate(config.model)
    model = instantiate(config.model, **without_weight_files(config.model))
    load_weights(model, config.pretrained)
    log.info("Initialised every weight from %s", config.pretrained)
    return model


class ProgressLog(Callback):
    """Logs one line per validation: the mean training loss since the previous one and the validation metrics,
    so that plain logs (train.log, CI output) show how training goes."""

    def __init__(self) -> None:
        self.loss_sum: Optional[torch.Tensor] = None
        self.batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            self.loss_sum = loss.detach() if self.loss_sum is None else self.loss_sum + loss.detach()
            self.batches += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = [f"loss {float(self.loss_sum) / self.batches:.4f}"] if self.batches else []
        metrics = trainer.callback_metrics
        shown += [f"{name} {float(metrics[name]):.4f}" for name in ("val_loss", "val_accuracy", "val_NED")
                  if name in metrics]
        log.info("step %d: %s", trainer.global_step, ", ".join(shown))
        self.loss_sum, self.batches = None, 0


@rank_zero_only
def save_config(config: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))


@hydra.main(config_path="configs", config_name="main", version_base="1.3")
def main(config: DictConfig) -> None:
    processes = world_size(config.trainer)
    reuse_freed_memory()
    with open_dict(config):
        config.data.root_dir = to_absolute_path(config.data.root_dir)
        for key in ("ckpt_path", "pretrained"):
            if config[key] is not None:
                config[key] = to_absolute_path(config[key])
        if processes > 1:
            scale_steps(config.trainer, processes)
    strategy: Union[str, Strategy] = config.trainer.strategy
    if processes > 1 and strategy in ("auto", "ddp"):
        strategy = DDPStrategy(find_unused_parameters=config.model.get("find_unused_parameters", False),
                               gradient_as_bucket_view=True)
    if config.seed is not None:
        pl.seed_everything(config.seed, workers=True)

    run_dir = (Path(config.ckpt_path).parents[1] if config.ckpt_path is not None
               else Path(HydraConfig.get().runtime.output_dir))
    save_config(config, run_dir)

    model = build_model(config)
    datamodule = instantiate(config.data)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_accuracy", mode="max", save_top_k=1,
                                 save_last=True, filename="{epoch}-{step}-{val_accuracy:.4f}-{val_NED:.4f}")
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="step"), ModelSummary(max_depth=2),
                 ProgressLog()]
    loggers = [TensorBoardLogger(run_dir, name="", version=""), CSVLogger(run_dir, name="csv")]
    trainer: pl.Trainer = instantiate(config.trainer, strategy=strategy, logger=loggers, callbacks=callbacks,
                                      default_root_dir=run_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=config.ckpt_path)

    if trainer.is_global_zero:
        best = checkpoint.best_model_path or checkpoint.last_model_path
        log.info("Run folder: %s; best checkpoint: %s", run_dir, best)
        if config.test_after_train:
            evaluate_checkpoint(Path(best), Path(config.data.root_dir), new=True,
                                device=str(trainer.strategy.root_device))


if __name__ == "__main__":
    main()
