"""What keeps a training run from losing work or going on with broken numbers: checkpoints written atomically
beside their destination and read with the safe loader, `last.ckpt` kept current, non-finite steps skipped and
counted, and resumed runs checked before they start."""
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import Tensor

from strhub.models.safe_load import InvalidCheckpointError, safe_load

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
TRAINING_STATE_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "global_step")


class TrainingError(RuntimeError):
    """Training cannot start or go on, for a reason its message explains; the checkpoints written so far are
    intact."""


class NonFiniteTrainingError(TrainingError):
    """The loss, the gradients or the weights are no longer finite numbers."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, quota, I/O error)."""


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) checkpoint: about the size of its file."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0


def non_finite_tensors(tensors: Dict[str, Tensor]) -> List[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are either complete or absent under their name, on any file system.

    A checkpoint is written to a hidden `.<name>.<random>.partial` file beside its destination and renamed over
    it (atomic on one file system), so the previous file stays whole until the new one is; a failed write
    removes its partial file. Non-finite weights are never written. Reading uses `safe_load`, so resuming
    refuses what a weights-only reader refuses.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        state_dict = checkpoint.get("state_dict", {})
        broken = non_finite_tensors(state_dict)
        if broken:
            raise NonFiniteTrainingError(
                f"refusing to save {path}: {len(broken)} of {len(state_dict)} weight tensors hold NaN or infinite "
                f"values (first: {broken[0]}); the checkpoints written before are kept")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "xb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if any(isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT) for cause in _chain(err)):
                kept = ", ".join(sorted(p.name for p in path.parent.glob("*.ckpt"))) or "none yet"
                raise CheckpointWriteError(
                    f"no space left to write {path}: the checkpoint needs {megabytes(tensor_bytes(checkpoint))}, "
                    f"{megabytes(shutil.disk_usage(path.parent).free)} are free on its file system. The "
                    f"checkpoints written before are kept: {kept}") from err
            raise

    def load_checkpoint(self, path: _PATH, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        return safe_load(path, map_location=map_location)


def _chain(err: BaseException) -> List[BaseException]:
    """An exception and those it was raised from or while handling (torch's writer wraps the file's OSError)."""
    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def remove_partial_files(folder: Path) -> List[Path]:
    """Removes the partial files that writes cut short (a killed process) left in `folder`; returns them."""
    partial = sorted(folder.glob(f".*{PARTIAL_SUFFIX}"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def check_resume_checkpoint(path: Path) -> None:
    """Raises InvalidCheckpointError unless `path` is a complete, safely readable Lightning training checkpoint
    (read with its tensors memory-mapped, so this costs little)."""
    checkpoint = safe_load(path, mmap=True)
    missing = [key for key in TRAINING_STATE_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise InvalidCheckpointError(
            f"cannot resume from {path}: it is not a Lightning training checkpoint (no {', '.join(missing)}); "
            f"to start a new run from its weights, use pretrained={path} instead of ckpt_path=")


class LatestCheckpoint(ModelCheckpoint):
    """`last.ckpt`: the latest training state, whatever the metrics did. It is written at every validation, or
    every `every_n_train_steps` optimizer steps when that is set, and when training ends."""

    def __init__(self, dirpath: Path, every_n_train_steps: Optional[int] = None) -> None:
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, save_on_train_epoch_end=False,
                         enable_version_counter=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class NonFiniteGuard(Callback):
    """Skips every optimizer step whose loss (or, without a gradient scaler, whose gradients) is not finite, as
    fp16 loss scaling does, counts them, and stops training with NonFiniteTrainingError after `max_in_a_row`
    such steps in a row. With a gradient scaler (fp16), the scaler itself skips steps with non-finite gradients."""

    def __init__(self, max_in_a_row: int) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0
        self.loss_finite: Optional[Tensor] = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        finite = self.loss_finite if self.loss_finite is not None else torch.tensor(True)
        self.loss_finite = None
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        if not scaled:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                finite = finite.to(grads[0].device) & torch.nn.utils.get_total_norm(grads).isfinite()
        if trainer.strategy.reduce_boolean_decision(bool(finite), all=True):
            self.in_a_row = 0
            return
        if not scaled:
            optimizer.zero_grad(set_to_none=True)  # the optimizer leaves parameters without gradients untouched
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite loss or gradients, optimizer step skipped (%d in a row, %d in all)",
                    trainer.global_step, self.in_a_row, self.skipped)
        if self.in_a_row >= self.max_in_a_row:
            broken = non_finite_tensors(pl_module.state_dict())
            weights = (f"{len(broken)} weight tensors are no longer finite" if broken
                       else "the weights are still finite")
            raise NonFiniteTrainingError(
                f"{self.in_a_row} optimizer steps in a row (up to step {trainer.global_step}) had a non-finite "
                f"loss or gradients (max_nonfinite_steps={self.max_in_a_row}); {weights}. Training stopped; the "
                f"checkpoints hold finite weights only. A lower learning rate (model.lr) usually helps")


class ScheduleGuard(Callback):
    """Stops a resumed run before its first step when it would train past the learning-rate schedule restored
    from its checkpoint (OneCycle cannot be stepped beyond its total)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        planned = trainer.estimated_stepping_batches
        for config in trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if total is not None and planned > total:
                raise TrainingError(
                    f"{trainer.ckpt_path} holds a learning-rate schedule of {total} steps and this run would train "
                    f"to step {planned}: a resumed run keeps its schedule, so it cannot go further. Resume with at "
                    f"most trainer.max_steps={total} (and the same trainer.max_epochs), or start a new run from its "
                    f"weights with a new schedule: pretrained={trainer.ckpt_path} trainer.max_steps=N")
