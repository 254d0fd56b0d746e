"""The loggers of a training run, chosen by the `logger` config group (configs/logger/: tensorboard, csv, mlflow,
wandb; several at once with `logger=[tensorboard,mlflow]`), built with Lightning's own loggers. Every run also
keeps its CSV log (<run>/csv/version_<N>/metrics.csv): its curves and the count of its starts are read from it.

Each logger receives the metrics the progress bar shows (Lightning sends them), the run's resolved config as
parameters and, with `run_loggers`, notes such as the memory plan; `log_outputs` adds, once training has ended, the
figures and the test report as artefacts and the test accuracies as metrics."""
import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from strhub.keys import ConfigError, check_keys, parameters
from strhub.models.checkpoint import best_checkpoint

log = logging.getLogger(__name__)

# The package each logger needs beyond Lightning, as setup.py's extras name it.
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
# Arguments the run sets itself, which the config does not take.
SET_BY_RUN = {"save_dir", "version", "experiment", "run_id", "id", "dir", "sub_dir", "prefix", "kwargs"}
# What `logger.wandb` may hold beside WandbLogger's own parameters: wandb.init's, passed on.
WANDB_INIT = ("entity", "group", "tags", "notes", "job_type", "mode")


# In a run folder that logs to MLflow: the store and the MLflow run of its latest start, for test.py.
MLFLOW_RECORD = "mlflow.json"


class RunLoggers(NamedTuple):
    loggers: List[Logger]
    start: int  # which start of the run this is (0 for the first), as the CSV logs count them


def is_path(location: Optional[str]) -> bool:
    """Whether an MLflow store is given as a local path rather than a URI (`sqlite:///...`, `databricks`...)."""
    return location is not None and "://" not in location and location != "databricks"


def absolute_stores(options: Mapping[str, Any]) -> Dict[str, Any]:
    """`options` (the `logger` config, plain data) with MLflow's local stores made absolute paths, so that they
    stay the same stores for processes started elsewhere (Ray Tune's trials)."""
    options = {name: dict(values or {}) for name, values in options.items()}
    if "mlflow" in options:
        for key in ("tracking_uri", "artifact_location"):
            location = options["mlflow"].get(key)
            options["mlflow"][key] = str(Path(location).absolute()) if is_path(location) else location
    return options


def mlflow_logger(options: Dict[str, Any], run_dir: Path) -> MLFlowLogger:
    uri = options.pop("tracking_uri")
    if is_path(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{uri}"
    artifacts = options.pop("artifact_location", None)
    if is_path(artifacts):
        artifacts = Path(artifacts).as_uri()
    tags = {"run_folder": str(run_dir), **(options.pop("tags", None) or {})}
    run_name = options.pop("run_name", None) or run_dir.name
    return MLFlowLogger(tracking_uri=uri, artifact_location=artifacts, tags=tags, run_name=run_name, **options)


def wandb_logger(options: Dict[str, Any], run_dir: Path) -> WandbLogger:
    name = options.pop("name", None) or run_dir.name
    return WandbLogger(save_dir=str(run_dir), name=name, **options)


def build(name: str, options: Mapping[str, Any], run_dir: Path) -> Logger:
    """The logger `name` with the `options` of `logger.<name>`; ConfigError for an unknown logger or key, or a
    logger whose package is not installed."""
    classes = {"tensorboard": TensorBoardLogger, "csv": CSVLogger, "mlflow": MLFlowLogger, "wandb": WandbLogger}
    if name not in classes:
        raise ConfigError(f"logger.{name}: no such logger (known: {', '.join(classes)})")
    extras = WANDB_INIT if name == "wandb" else ()
    try:
        annotated = parameters(classes[name], *extras)
    except NameError:  # annotations naming types their module imports only for type checkers (W&B's Run)
        annotated = dict.fromkeys([*inspect.signature(classes[name]).parameters, *extras], Any)
    known = {key: kind for key, kind in annotated.items()
             if key not in SET_BY_RUN and not (key == "name" and name in ("tensorboard", "csv"))}
    check_keys(options, known, f"logger.{name} key", prefix=f"logger.{name}.")
    if name in EXTRAS:
        try:
            __import__(EXTRAS[name])
        except ImportError:
            raise ConfigError(f"logger={name} needs the {EXTRAS[name]} package: pip install "
                              f"'strhub[{EXTRAS[name]}]'") from None
    options = absolute_stores({name: options})[name]
    if name == "mlflow":
        return mlflow_logger(options, run_dir)
    if name == "wandb":
        return wandb_logger(options, run_dir)
    if name == "tensorboard":
        return TensorBoardLogger(run_dir, name="", version="", **options)
    return CSVLogger(run_dir, name="csv", **options)


def run_loggers(options: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any],
                notes: Optional[Mapping[str, str]] = None) -> RunLoggers:
    """The loggers `options` (the `logger` config) names, writing to `run_dir`, and the CSV logger in any case;
    each has `config` (the resolved run config, plain data) as its parameters and `notes` (name: a line of text)
    recorded. ConfigError for an unknown logger or key."""
    chosen = [build(name, values or {}, run_dir) for name, values in options.items() if name != "csv"]
    csv = build("csv", options.get("csv") or {}, run_dir)
    loggers = [*chosen, csv]
    for logger in loggers:
        logger.log_hyperparams(dict(config))
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:  # rank 0's
            record = {"tracking_uri": logger.experiment.tracking_uri, "run_id": logger.run_id}
            (run_dir / MLFLOW_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log_notes(loggers, notes or {})
    return RunLoggers(loggers, int(csv.version))


def log_notes(loggers: Iterable[Logger], notes: Mapping[str, str]) -> None:
    """Lines of text beside the metrics: MLflow tags, W&B config entries, TensorBoard text (the CSV log has
    none: train.log holds them)."""
    for logger in loggers:
        for name, text in notes.items():
            if isinstance(logger, MLFlowLogger):
                logger.experiment.set_tag(logger.run_id, name, text)
            elif isinstance(logger, WandbLogger):
                logger.experiment.config.update({name: text}, allow_val_change=True)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(name, text)


def report_metrics(report: Path) -> Dict[str, float]:
    """The accuracy and NED of each group (its Combined row) of a test.py JSON report, as `test/<group>/<metric>`
    with the group's name in the letters every tracker takes (`Benchmark (Subset)`: `Benchmark_Subset`)."""
    groups = json.loads(report.read_text(encoding="utf-8")).get("groups", {})
    return {f"test/{re.sub(r'[^A-Za-z0-9_.-]+', '_', group).strip('_')}/{metric}": float(values[metric])
            for group, values in groups.items() for metric in ("accuracy", "ned") if values.get(metric) is not None}


def run_outputs(run_dir: Path, checkpoint: Optional[Path]) -> List[Path]:
    """What a run leaves for its trackers: its figures (curves.png, error galleries under errors/) and the test
    reports written beside `checkpoint` (`<checkpoint>.log_*`)."""
    files = sorted(run_dir.glob("*.png")) + sorted((run_dir / "errors").rglob("*.png"))
    if checkpoint is not None:
        files += sorted(checkpoint.parent.glob(f"{checkpoint.name}.log_*"))
    return [path for path in files if path.is_file()]


def log_outputs(loggers: Sequence[Logger], run_dir: Path, checkpoint: Optional[Path]) -> None:
    """Logs `run_outputs` as artefacts (MLflow, W&B; TensorBoard gets the test table as text), the test metrics,
    and closes the W&B run, which Lightning leaves open."""
    files = run_outputs(run_dir, checkpoint)
    reports = [path for path in files if path.suffix == ".json"]
    metrics = {name: value for report in reports for name, value in report_metrics(report).items()}
    for logger in loggers:
        if metrics and not isinstance(logger, CSVLogger):
            logger.log_metrics(metrics)
        for path in files:
            folder = "figures" if path.suffix == ".png" else "test"
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), folder)
            elif isinstance(logger, WandbLogger):
                logger.experiment.save(str(path), base_path=str(path.parent), policy="now")
            elif isinstance(logger, TensorBoardLogger) and path.suffix == ".md":
                logger.experiment.add_text("test", path.read_text(encoding="utf-8"))
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()
    if files:
        log.info("Logged %d files to the trackers: %s", len(files), ", ".join(path.name for path in files))


def log_test_reports(checkpoint: Path) -> None:
    """After test.py: the test reports of `checkpoint` (a file in `<run>/checkpoints/`, or a run folder: its best
    one), and their metrics, go to the MLflow run of the run's latest start, when it logged to MLflow. A store that
    cannot take them is named in a warning: the reports stand without it."""
    checkpoint = checkpoint.absolute()
    if checkpoint.is_dir():
        run_dir, checkpoint = checkpoint, best_checkpoint(checkpoint)
    elif checkpoint.parent.name == "checkpoints":
        run_dir = checkpoint.parents[1]
    else:
        return
    record_file = run_dir / MLFLOW_RECORD
    if not record_file.is_file():
        return
    reports = [path for path in run_outputs(run_dir, checkpoint) if path.suffix != ".png"]
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning("%s logs to MLflow; pip install 'strhub[mlflow]' to send it the test reports", run_dir)
        return
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        client = MlflowClient(tracking_uri=record["tracking_uri"])
        for path in reports:
            client.log_artifact(record["run_id"], str(path), "test")
        for report in (path for path in reports if path.suffix == ".json"):
            for name, value in report_metrics(report).items():
                client.log_metric(record["run_id"], name, value)
    except (MlflowException, OSError, ValueError, KeyError) as err:
        log.warning("The test reports were not sent to MLflow (%s): %s", record_file, err)
        return
    log.info("Test reports sent to MLflow run %s (%s)", record["run_id"], record["tracking_uri"])
