"""A training run's folder and its life: the folder of a new or resumed run, the steps scaled to the processes,
the configuration saved at each start, what a failed start leaves (nothing), and the progress lines of train.log."""
import functools
import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Set, Tuple

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, Timer
from pytorch_lightning.utilities import rank_zero_only

from strhub.training.callbacks import TrainingError

log = logging.getLogger(__name__)


def world_size(trainer: Mapping[str, Any]) -> int:
    """Number of training processes of a `trainer` config: devices per node (resolved as Lightning does) times nodes."""
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        uses_gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if uses_gpu else 1
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
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
def save_config(config: DictConfig, run_dir: Path, start: int, command: str) -> None:
    """The resolved configuration of the run's `start`-th start (counted as the CSV logs are), with the
    `command` that started it: config.yaml for the first, config_<start>.yaml for later ones."""
    name = "config.yaml" if start == 0 else f"config_{start}.yaml"
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


def random_clip_notice(model: Mapping[str, Any]) -> Optional[Tuple[int, str]]:
    """The log level and line that announce a CLIP with random weights: for the model config of a CLIP family
    with `clip_pretrained: null`, else None. A named architecture (ViT-B-16, ...) has released weights, so
    starting it from random ones is a WARNING that says how to give them; a shape of one's own (the `tiny` and
    `*-mini` experiments) has none, so a plain note says it is meant."""
    if "clip_pretrained" not in model or model["clip_pretrained"] is not None:
        return None
    arch = model.get("clip_arch")
    if isinstance(arch, str):
        return logging.WARNING, (
            f"model.clip_pretrained is null: the {arch} CLIP of {model.get('name')} starts from RANDOM weights, so "
            f"it trains without the pre-training CLIP4STR is built on and will read little. Give CLIP weights with "
            f"model.clip_pretrained=FILE (an OpenAI .pt or OpenCLIP .bin of {arch}), or use an experiment that "
            f"names them, e.g. +experiment=vl4str with ViT-B-16.pt in $CLIP_DIR (default pretrained/clip; see "
            f"docs/data.md)")
    return logging.INFO, (
        f"Note: {model.get('name')} has a CLIP of its own shape (clip_arch) and clip_pretrained null, so its CLIP "
        f"starts from random weights, as the small experiments mean it to; no released CLIP has this shape")
