"""Searches training settings with Ray Tune: `configs/tune.yaml` (the training config plus `tune`), e.g.

    python tune.py +experiment=vl4str data.root_dir=/data tune.num_samples=16 tune.gpus_per_trial=1 \
        trainer.max_steps=20000

An Optuna search over `tune.space` (the learning rate, as the original), an ASHA scheduler that stops the trials
falling behind on `tune.metric`, reported at each validation. The search lives in <tune.storage_path>/<tune.name>/:
a folder per trial with its logs and its best checkpoints; the best trial and checkpoint are named at the end.
An interrupted search is taken up with `tune.name=<its name> tune.resume=true`. On a cluster: `ray start --head`
on one machine, `ray start --address=...` on the others, then `tune.address=auto` (docs/tracking.md)."""
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from strhub.app.overrides import check_command_line, check_sections
from strhub.config import CONFIG_DIR, register_resolvers
from strhub.keys import ConfigError
from strhub.training.loggers import absolute_stores

log = logging.getLogger(__name__)

DISTRIBUTIONS = {"loguniform": ("lower", "upper"), "uniform": ("lower", "upper"), "choice": ("values",)}


def search_space(space: Mapping[str, Mapping[str, Any]], config: DictConfig) -> Dict[str, Any]:
    """Ray's search space of `tune.space`; ConfigError naming the entry that is not one."""
    from ray import tune

    built = {}
    for name, entry in space.items():
        where = f"tune.space.{name}"
        kind = entry.get("distribution")
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{where}.distribution must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
        if OmegaConf.select(config, str(entry.get("key")), default="<absent>") == "<absent>":
            raise ConfigError(f"{where}.key: {entry.get('key')!r} is not a key of the config")
        missing = [arg for arg in DISTRIBUTIONS[kind] if entry.get(arg) is None]
        if missing:
            raise ConfigError(f"{where}: a {kind} distribution needs {' and '.join(missing)}")
        if kind == "choice":
            built[name] = tune.choice(list(entry["values"]))
        else:
            built[name] = getattr(tune, kind)(float(entry["lower"]), float(entry["upper"]))
    return built


def validations(config: DictConfig) -> int:
    """ASHA's max_t: `tune.scheduler.max_t`, or the validations of a run to trainer.max_steps."""
    if config.tune.scheduler.max_t is not None:
        return int(config.tune.scheduler.max_t)
    steps, every = config.trainer.max_steps, config.trainer.val_check_interval
    if steps > 0 and isinstance(every, int):
        return max(1, math.ceil(steps / every))
    raise ConfigError("tune.scheduler.max_t is needed unless trainer.max_steps and an integer "
                      "trainer.val_check_interval give the number of validations")


def trial_settings(config: DictConfig) -> Dict[str, Any]:
    """The resolved training config that every trial starts from, with its paths absolute (a trial runs in its
    own folder) and its accelerator set from tune.gpus_per_trial."""
    settings = OmegaConf.to_container(config, resolve=True)
    settings.pop("tune")
    check_sections(settings)
    settings["data"]["root_dir"] = to_absolute_path(settings["data"]["root_dir"])
    if settings.get("pretrained") is not None:
        settings["pretrained"] = to_absolute_path(settings["pretrained"])
    settings["logger"] = absolute_stores(settings["logger"])
    if settings["trainer"].get("accelerator") == "auto":
        settings["trainer"]["accelerator"] = "gpu" if config.tune.gpus_per_trial > 0 else "cpu"
    return settings


def start_ray(address: Any) -> None:
    import ray

    if address is None:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    else:
        ray.init(address=address, include_dashboard=False, configure_logging=False)


def search(config: DictConfig) -> Path:
    """Runs (or takes up) the search of `config` and returns the best checkpoint."""
    try:
        from ray import tune
    except ImportError:
        raise ConfigError("tune.py needs Ray Tune and Optuna: pip install 'strhub[tune]'") from None
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from strhub.training.tuning import CHECKPOINT_FILE, REPORTED, run_trial

    settings = config.tune
    if settings.metric not in REPORTED:
        raise ConfigError(f"tune.metric must be one of {', '.join(REPORTED)}, got {settings.metric!r}")
    space = search_space(settings.space, config)
    keys = {name: entry["key"] for name, entry in settings.space.items()}
    storage = Path(to_absolute_path(settings.storage_path))
    folder = storage / settings.name
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, config=trial_settings(config), keys=keys),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    start_ray(settings.address)
    if settings.resume:
        if not tune.Tuner.can_restore(str(folder)):
            raise ConfigError(f"tune.resume: {folder} holds no search to take up (check tune.name)")
        log.info("Taking up the search in %s", folder)
        tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
    else:
        points = [dict(point) for point in settings.points_to_evaluate]
        searcher = OptunaSearch(points_to_evaluate=points or None, seed=settings.seed)
        scheduler = ASHAScheduler(max_t=validations(config), grace_period=settings.scheduler.grace_period,
                                  reduction_factor=settings.scheduler.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=settings.metric, mode=settings.mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=settings.num_samples),
            run_config=tune.RunConfig(
                name=settings.name, storage_path=str(storage),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                                        checkpoint_score_attribute=settings.metric,
                                                        checkpoint_score_order=settings.mode)))
    results = tuner.fit()
    best = results.get_best_result(metric=settings.metric, mode=settings.mode, scope="all")
    if best.checkpoint is None:
        raise ConfigError(f"no trial of {folder} reported a validation (see the trials' errors above)")
    stopped = sum(1 for result in results if result.metrics.get("training_iteration", 0) < validations(config)
                  and result.error is None)
    log.info("Trials: %d, of which %d stopped early by ASHA, %d failed", len(results), stopped, results.num_errors)
    checkpoint = Path(best.checkpoint.path) / CHECKPOINT_FILE
    shown = ", ".join(f"{name} {best.config[name]:.4g}" if isinstance(best.config[name], float)
                      else f"{name} {best.config[name]}" for name in keys)
    log.info("Best trial: %s (%s): %s %.4f; checkpoint: %s", Path(best.path).name, shown, settings.metric,
             best.metrics_dataframe[settings.metric].agg(settings.mode), checkpoint)
    return checkpoint


@hydra.main(config_path=str(CONFIG_DIR), config_name="tune", version_base="1.3")
def tune_main(config: DictConfig) -> None:
    try:
        search(config)
    except ConfigError as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)


def main() -> None:
    check_command_line("tune")
    register_resolvers()
    tune_main()


if __name__ == "__main__":
    main()
