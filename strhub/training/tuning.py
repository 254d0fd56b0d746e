"""One trial of a Ray Tune search (tune.py): a training run with the trial's settings, reporting the validation
metrics and a checkpoint to Ray at each validation, and resuming from its latest checkpoint when Ray restarts it
(a search taken up after a crash)."""
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback
from ray import tune

from strhub.training.callbacks import NonFiniteGuard
from strhub.training.loggers import run_loggers

REPORTED = ("val_accuracy", "val_NED", "val_loss")
CHECKPOINT_FILE = "checkpoint.ckpt"


class ReportToTune(Callback):
    """At the end of each validation, reports `REPORTED` and the step to Ray with a checkpoint of the run (a
    Lightning checkpoint, `checkpoint.ckpt` in Ray's checkpoint folder)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics: Dict[str, Any] = {name: float(trainer.callback_metrics[name]) for name in REPORTED
                                   if name in trainer.callback_metrics}
        metrics["step"] = trainer.global_step
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_config(config: Mapping[str, Any], keys: Mapping[str, str], sampled: Mapping[str, Any]) -> Dict[str, Any]:
    """`config` (the resolved training config, plain data) with the trial's `sampled` values set at their config
    keys (`keys`: name in the search space to config key)."""
    trial = OmegaConf.create(dict(config))
    for name, value in sampled.items():
        OmegaConf.update(trial, keys[name], value, merge=False)
    return OmegaConf.to_container(trial)


def latest_checkpoint() -> Optional[str]:
    """The Lightning checkpoint Ray restores this trial from, if it restarts one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    return str(Path(checkpoint.to_directory()) / CHECKPOINT_FILE)  # a local copy, kept while the trial runs


def run_trial(sampled: Dict[str, Any], config: Dict[str, Any], keys: Dict[str, str]) -> None:
    """The trainable Ray runs: trains `config` with the `sampled` settings, logging into the trial's folder."""
    config = trial_config(config, keys, sampled)
    if config.get("seed") is not None:
        pl.seed_everything(config["seed"], workers=True)
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    tracking = run_loggers(config["logger"], trial_dir, config)
    model = instantiate(config["model"])
    datamodule = instantiate(config["data"])
    trainer: pl.Trainer = instantiate(config["trainer"], logger=tracking.loggers, enable_checkpointing=False,
                                      callbacks=[ReportToTune(), NonFiniteGuard(config["max_nonfinite_steps"])],
                                      default_root_dir=trial_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=latest_checkpoint())
