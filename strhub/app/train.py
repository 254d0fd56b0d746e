"""Trains CLIP4STR. Configuration: configs/main.yaml and its groups; every key can be overridden, e.g.

    python train.py +experiment=vl4str data.root_dir=/data/str_dataset trainer.devices=4 model.batch_size=256 \
        model.clip_pretrained=pretrained/clip/ViT-B-16.pt

Outputs go to a new folder outputs/<model>/<date>_<time>/ per run: checkpoints/ (best by val_accuracy, and
last.ckpt, the latest state), TensorBoard and CSV logs, the resolved configuration of every start
(config.yaml, then config_<N>.yaml) and, when training ends, curves.png. Resume with
ckpt_path=<run>/checkpoints/last.ckpt. `logger=mlflow`, `logger=wandb`, `logger=[tensorboard,mlflow]`... also send the
run to experiment trackers (configs/logger/, docs/tracking.md).
"""
import logging
import sys
from pathlib import Path
from typing import Union

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.utilities import rank_zero_only

from strhub.app.common import user_errors
from strhub.app.overrides import check_command_line, check_sections
from strhub.config import CONFIG_DIR, register_resolvers
from strhub.data.dataset import check_label_settings
from strhub.evaluation.evaluate import evaluate_checkpoint
from strhub.host import reuse_freed_memory
from strhub.models.registry import Family, without_weight_files
from strhub.models.utils import load_weights
from strhub.tools.plot_run import plot_run
from strhub.training.callbacks import (
    AtomicCheckpointIO,
    LatestCheckpoint,
    NonFiniteGuard,
    ScheduleGuard,
    check_resume_checkpoint,
    remove_partial_files,
)
from strhub.training.loggers import log_outputs, run_loggers
from strhub.training.planner import training_plan_line
from strhub.training.run import (
    ProgressLog,
    StartCleanup,
    claim_run_folder,
    log_to,
    random_clip_notice,
    resumed_run,
    run_folder,
    save_config,
    scale_steps,
    world_size,
)
from strhub.training.strategies import check_strategy, mark_other_nodes, training_strategy

log = logging.getLogger(__name__)


mark_other_nodes()
register_resolvers()
if not OmegaConf.has_resolver("run_folder"):
    OmegaConf.register_new_resolver("run_folder", run_folder)


def build_model(config: DictConfig) -> pl.LightningModule:
    """The system of `config.model`; with `pretrained`, its CLIP is built from `model.clip_arch` (no CLIP weight
    file needed) and every weight is then loaded from that checkpoint."""
    settings = OmegaConf.to_container(config.model, resolve=True)
    if config.pretrained is None:
        return Family.of(settings).build(settings, system=True)
    model = Family.of(settings).build({**settings, **without_weight_files(settings)}, system=True)
    load_weights(model, config.pretrained)
    log.info("Initialised every weight from %s", config.pretrained)
    return model


@hydra.main(config_path=str(CONFIG_DIR), config_name="main", version_base="1.3")
def main(config: DictConfig) -> None:
    cleanup = StartCleanup()
    cleanup.watch(Path(HydraConfig.get().runtime.output_dir))
    try:
        train(config, cleanup)
    except Exception as err:
        cleanup.clean()
        log.error("%s: %s", type(err).__name__, err)  # the last line, below the cleanup's
        if isinstance(err, user_errors()):
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
    notes = {}
    if rank_zero_only.rank == 0:
        notes["memory_plan"] = training_plan_line(resolved["model"], config.trainer, processes)
        log.info(notes["memory_plan"])
    datamodule = instantiate(config.data)
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_accuracy", mode="max", save_top_k=1,
                           filename="{epoch}-{step}-{val_accuracy:.4f}-{val_NED:.4f}", save_on_train_epoch_end=False)
    latest = LatestCheckpoint(run_dir / "checkpoints", config.last_ckpt_every_n_steps)
    callbacks = [best, latest, NonFiniteGuard(config.max_nonfinite_steps), ScheduleGuard(),
                 LearningRateMonitor(logging_interval="step"), ModelSummary(max_depth=2), ProgressLog(), cleanup]
    tracking = run_loggers(resolved["logger"], run_dir, resolved, notes)
    save_config(config, run_dir, tracking.start, " ".join(["python train.py", *HydraConfig.get().overrides.task]))
    trainer: pl.Trainer = instantiate(config.trainer, strategy=strategy, logger=tracking.loggers, callbacks=callbacks,
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
        log_outputs(tracking.loggers, run_dir, Path(best_path) if best_path else None)


def cli() -> None:
    """`strhub-train` and `python train.py`: the command line checked, then Hydra's main."""
    check_command_line("main")
    main()


if __name__ == "__main__":
    cli()
