#!/usr/bin/env python3
"""Trains CLIP4STR. Configuration: configs/main.yaml and its groups; every key can be overridden, e.g.

    python train.py +experiment=vl4str data.root_dir=/data/str_dataset trainer.devices=4 model.batch_size=256 \
        model.clip_pretrained=pretrained/clip/ViT-B-16.pt

Outputs go to a new folder outputs/<model>/<date>_<time>/ per run: checkpoints/ (best by val_accuracy, and
last.ckpt, the latest state), TensorBoard and CSV logs, the resolved configuration of every start
(config.yaml, then config_<N>.yaml) and, when training ends, curves.png. Resume with
ckpt_path=<run>/checkpoints/last.ckpt.
"""
import functools
import itertools
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Set, Tuple, Union

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary, Timer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.utilities import rank_zero_only

from strhub.callbacks import (AtomicCheckpointIO, LatestCheckpoint, NonFiniteGuard, ScheduleGuard, TrainingError,
                              check_resume_checkpoint, remove_partial_files)
from strhub.cli import (check_command_line, check_sections, random_clip_notice, register_resolvers,
                        reuse_freed_memory, world_size)
from strhub.data.dataset import check_label_settings
from strhub.evaluate import evaluate_checkpoint
from strhub.keys import ConfigError
from strhub.memory import training_plan_line
from strhub.models.registry import without_weight_files
from strhub.models.safe_load import InvalidCheckpointError
from strhub.models.utils import load_weights
from strhub.strategies import check_strategy, mark_other_nodes, training_strategy
from strhub.tools.plot_run import plot_run

log = logging.getLogger(__name__)


def resumed_run(ckpt_path: Optional[str]) -> Optional[Path]:
    """The run folder that `ckpt_path` belongs to, when it lies in `<run>/checkpoints/`."""
    path = Path(ckpt_path).absolute() if ckpt_path is not None else None
    return path.parents[1] if path is not None and path.parent.name == "checkpoints" else None


@functools.lru_cache(maxsize=None)
def run_folder(ckpt_path: Optional[str], parent: str) -> str:
    """The default `hydra.run.dir`: the folder of the run that `ckpt_path` resumes, else a new folder
    `<parent>/<date>_<time>` (`_2`, `_3`, ... when that name is taken), created here so that two runs never share
    one. Processes of rank > 0 take the name without creating a folder."""
    resumed = resumed_run(ckpt_path)
    if resumed is not None:
        return str(resumed)
    base = Path(parent) / time.strftime("%Y-%m-%d_%H-%M-%S")
    if rank_zero_only.rank != 0:
        return str(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        folder = base if attempt == 1 else base.with_name(f"{base.name}_{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return str(folder)


mark_other_nodes()
register_resolvers()
OmegaConf.register_new_resolver("run_folder", run_folder)


class StartCleanup(Callback):
    """Leaves nothing of a start that fails before its first training step: a folder the start created is removed,
    with the empty folders above it up to the working directory (`outputs/<model>`), and of what it wrote in a
    folder that was there before (a resumed run's, a given `hydra.run.dir`) only `train.log`, which holds the
    error, stays. Only rank 0 watches folders: it is the one that makes them."""

    def __init__(self) -> None:
        self.before: Dict[Path, Optional[Set[Path]]] = {}  # folder: what it held before the start, None if new
        self.trained = False

    def watch(self, folder: Path) -> None:
        if rank_zero_only.rank != 0 or folder in self.before:
            return
        held = set(folder.rglob("*")) if folder.is_dir() else set()
        log_file = folder / "train.log"
        new = held <= {log_file} and (not log_file.exists() or log_file.stat().st_size == 0)
        self.before[folder] = None if new else held

    def on_train_batch_end(self, *args: Any) -> None:
        self.trained = True

    def clean(self) -> None:
        if self.trained:
            return
        cwd = Path.cwd()
        for folder, before in self.before.items():
            if before is None:
                shutil.rmtree(folder, ignore_errors=True)
                for parent in folder.parents:
                    if parent == cwd or not parent.is_relative_to(cwd) or any(parent.iterdir()):
                        break
                    parent.rmdir()
                log.info("Removed %s: the start failed before its first training step", folder)
                continue
            for path in sorted(set(folder.rglob("*")) - before, reverse=True):  # a folder's files before it
                if path == folder / "train.log":
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


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


def stop_reason(trainer: pl.Trainer) -> str:
    """Why `trainer.fit` ended, in terms of the setting that ended it."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return f"trainer.max_steps={trainer.max_steps} reached"
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    if timer is not None and timer.time_remaining() <= 0:
        return f"trainer.max_time reached after {timer.time_elapsed():.0f} s"
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return f"trainer.max_epochs={trainer.max_epochs} reached"
    return "stopped before its limits"


class ProgressLog(Callback):
    """Logs one line per validation, the mean training loss since the previous one and the validation metrics, and
    one when training ends: the step reached, what ended it there and the latest mean loss. Plain logs (train.log,
    CI output) then show how training went."""

    def __init__(self) -> None:
        self.loss_sum: Optional[torch.Tensor] = None
        self.batches = 0
        self.latest: Optional[Tuple[float, int]] = None  # the latest mean loss, and of how many batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            self.loss_sum = loss.detach() if self.loss_sum is None else self.loss_sum + loss.detach()
            self.batches += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        mean = self.close_interval()
        shown = [f"loss {mean:.4f}"] if mean is not None else []
        metrics = trainer.callback_metrics
        shown += [f"{name} {float(metrics[name]):.4f}" for name in ("val_loss", "val_accuracy", "val_NED")
                  if name in metrics]
        log.info("step %d: %s", trainer.global_step, ", ".join(shown))

    def close_interval(self) -> Optional[float]:
        """The mean training loss of the batches since the previous call (None without any), kept as the latest."""
        if not self.batches:
            return None
        self.latest = (float(self.loss_sum) / self.batches, self.batches)
        self.loss_sum, self.batches = None, 0
        return self.latest[0]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.close_interval()
        planned = f" of {trainer.max_steps}" if trainer.max_steps > 0 else ""
        loss = ""
        if self.latest is not None:
            loss = f"; training loss {self.latest[0]:.4f} (mean of the last {self.latest[1]} batches)"
        log.info("Training ended at step %d%s: %s%s", trainer.global_step, planned, stop_reason(trainer), loss)


@rank_zero_only
def claim_run_folder(run_dir: Path) -> None:
    """Makes `run_dir/checkpoints` for a new run, refusing a folder that already holds one."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True)
    except FileExistsError:
        raise TrainingError(f"{run_dir} already holds a run (it has checkpoints/) and runs never share a folder: "
                            f"resume it with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}, or give another "
                            f"hydra.run.dir") from None


@rank_zero_only
def save_config(config: DictConfig, run_dir: Path, start: int) -> None:
    """The resolved configuration of the run's `start`-th start (counted as the CSV logs are), with the command
    line's overrides: config.yaml for the first, config_<start>.yaml for later ones."""
    name = "config.yaml" if start == 0 else f"config_{start}.yaml"
    command = " ".join(["python train.py", *HydraConfig.get().overrides.task])
    (run_dir / name).write_text(f"# {command}\n{OmegaConf.to_yaml(config, resolve=True)}")


def log_to(path: Path) -> None:
    """Moves the file logging that Hydra set up (train.log in its run folder) to `path`."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        moved = logging.FileHandler(path)
        moved.setFormatter(handler.formatter)
        moved.setLevel(handler.level)
        root.removeHandler(handler)
        handler.close()
        root.addHandler(moved)


EXPECTED_ERRORS = (TrainingError, InvalidCheckpointError, ConfigError, FileNotFoundError)


@hydra.main(config_path="configs", config_name="main", version_base="1.3")
def main(config: DictConfig) -> None:
    cleanup = StartCleanup()
    cleanup.watch(Path(HydraConfig.get().runtime.output_dir))
    try:
        train(config, cleanup)
    except Exception as err:
        cleanup.clean()
        log.error("%s: %s", type(err).__name__, err)  # the last line, below the cleanup's
        if isinstance(err, EXPECTED_ERRORS):
            sys.exit(1)
        raise
    except BaseException:  # interrupted
        cleanup.clean()
        raise


def train(config: DictConfig, cleanup: StartCleanup) -> None:
    processes = world_size(config.trainer)
    check_strategy(config.trainer.strategy, config.trainer.accelerator)
    reuse_freed_memory()
    with open_dict(config):
        config.data.root_dir = to_absolute_path(config.data.root_dir)
        for key in ("ckpt_path", "pretrained"):
            if config[key] is not None:
                config[key] = to_absolute_path(config[key])
        if processes > 1:
            scale_steps(config.trainer, processes)
    if config.seed is not None:
        pl.seed_everything(config.seed, workers=True)

    resolved = OmegaConf.to_container(config, resolve=True)
    check_sections(resolved)
    check_label_settings(resolved["data"]["charset_train"], resolved["data"]["remove_whitespace"],
                         resolved["data"]["normalize_unicode"])
    starts_fresh = config.pretrained is None and config.ckpt_path is None
    notice = random_clip_notice(resolved["model"]) if starts_fresh else None
    if notice is not None:
        log.log(*notice)
    if config.ckpt_path is not None:
        check_resume_checkpoint(Path(config.ckpt_path))
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    resumed = resumed_run(config.ckpt_path)
    run_dir = resumed or hydra_dir
    if resumed is None:
        claim_run_folder(run_dir)
    elif run_dir != hydra_dir:
        cleanup.watch(run_dir)
        log_to(run_dir / "train.log")
    if rank_zero_only.rank == 0:
        for path in remove_partial_files(run_dir / "checkpoints"):
            log.warning("Removed %s, a checkpoint write cut short", path)

    model = build_model(config)
    strategy: Union[str, Strategy] = training_strategy(config.trainer.strategy, config.trainer.accelerator, processes,
                                                       model)
    if rank_zero_only.rank == 0:
        log.info(training_plan_line(resolved["model"], config.trainer, processes))
    datamodule = instantiate(config.data)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_accuracy", mode="max", save_top_k=1,
                           filename="{epoch}-{step}-{val_accuracy:.4f}-{val_NED:.4f}", save_on_train_epoch_end=False)
    latest = LatestCheckpoint(run_dir / "checkpoints", config.last_ckpt_every_n_steps)
    callbacks = [best, latest, NonFiniteGuard(config.max_nonfinite_steps), ScheduleGuard(),
                 LearningRateMonitor(logging_interval="step"), ModelSummary(max_depth=2), ProgressLog(), cleanup]
    csv_logger = CSVLogger(run_dir, name="csv")
    loggers = [TensorBoardLogger(run_dir, name="", version=""), csv_logger]
    save_config(config, run_dir, csv_logger.version)
    trainer: pl.Trainer = instantiate(config.trainer, strategy=strategy, logger=loggers, callbacks=callbacks,
                                      plugins=[AtomicCheckpointIO()], default_root_dir=run_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=config.ckpt_path)

    if trainer.is_global_zero:
        best_path = best.best_model_path or latest.best_model_path
        log.info("Run folder: %s; best checkpoint: %s", run_dir, best_path)
        try:
            log.info("Training curves: %s", plot_run(run_dir))
        except (OSError, ValueError) as err:  # the run's results stand without the figure
            log.warning("No training curves drawn: %s", err)
        if config.test_after_train:
            evaluate_checkpoint(Path(best_path), Path(config.data.root_dir), new=True,
                                full_charset=config.test_full_charset,
                                device=str(trainer.strategy.root_device))


if __name__ == "__main__":
    check_command_line("main")
    main()
