"""Experiment trackers (configs/logger/): one tiny run logs to MLflow (a SQLite store in a temporary folder, read
back through MLflow's client) and to W&B offline (its run folder's transaction log, read back record by record),
and what they hold equals the run's train.log, config.yaml and files; nothing tries the network."""
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from runs import REPO, train
from wandb.proto import wandb_internal_pb2

from strhub.app.overrides import check_overrides
from strhub.keys import ConfigError
from strhub.tools import compare_runs
from strhub.training.loggers import run_loggers


class ConnectionRecorder:
    """A TCP server on 127.0.0.1 that counts the connections made to it (and answers none)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = "http://127.0.0.1:%d" % self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            client.close()


def leaves(config: Dict[str, object], prefix: str = "") -> Iterator[Tuple[str, object]]:
    """The values of a nested config, each with its keys joined by `/`, as MLflow's parameters name them."""
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def validation_lines(log: str) -> List[Dict[str, float]]:
    """The metrics of each `step N: loss ..., val_loss ..., val_accuracy ..., val_NED ...` line of train.log."""
    return [{name: float(value) for name, value in re.findall(r"(val_\w+) (\d+\.\d+)", line)}
            for line in re.findall(r"step \d+: loss .*", log)]


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header, then LevelDB-log blocks of
    32 KiB whose chunks (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) hold records."""
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data.startswith(b":W&B")
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture(scope="module")
def tracked_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, int]:
    """A run of 4 steps (validations at 2 and 4) tested after training, logged to MLflow and W&B, with every
    proxy and W&B's server address pointed at a connection recorder; the run folder, the MLflow store's folder and
    the connections made."""
    folder = tmp_path_factory.mktemp("tracked")
    recorder = ConnectionRecorder()
    env = {key: value for key, value in os.environ.items() if key.lower() != "no_proxy"}
    env.update({key: recorder.address for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                                   "WANDB_BASE_URL")})
    env.update(WANDB_CONFIG_DIR=str(folder / "wandb_config"), WANDB_CACHE_DIR=str(folder / "wandb_cache"),
               WANDB_DATA_DIR=str(folder / "wandb_data"))
    train(data_root, folder / "run", "trainer.max_steps=4", "test_after_train=true", "logger=[mlflow,wandb]",
          f"logger.mlflow.tracking_uri={folder / 'store' / 'mlflow.db'}",
          f"logger.mlflow.artifact_location={folder / 'store' / 'artifacts'}", env=env)
    recorder.server.close()
    return folder / "run", folder / "store", recorder.connections


def test_mlflow_holds_the_runs_parameters_metrics_and_files(tracked_run: Tuple[Path, Path, int]) -> None:
    run_dir, store, _ = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vl4str-tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["run_folder"] == str(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    params = run.data.params
    for key, value in leaves({section: config[section] for section in ("model", "data", "trainer")}):
        assert params[key] == str(value), key
    assert params["logger/mlflow/tracking_uri"] == str(store / "mlflow.db")

    log = (run_dir / "train.log").read_text()
    assert run.data.tags["memory_plan"] in log and run.data.tags["memory_plan"].startswith("Memory plan per GPU")
    validations = validation_lines(log)
    assert len(validations) == 2
    for name in ("val_loss", "val_accuracy", "val_NED"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [round(m.value, 4) for m in sorted(history, key=lambda m: m.step)] == [v[name] for v in validations]

    (report,) = (run_dir / "checkpoints").glob("*.log_newTrue.*.json")
    groups = json.loads(report.read_text())["groups"]
    for group, name in (("Benchmark", "Benchmark"), ("Benchmark (Subset)", "Benchmark_Subset")):
        for metric in ("accuracy", "ned"):
            assert run.data.metrics[f"test/{name}/{metric}"] == pytest.approx(groups[group][metric])
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="",
                                                     dst_path=str(store / "download"),
                                                     tracking_uri=client.tracking_uri))
    assert (local / "figures" / "curves.png").read_bytes() == (run_dir / "curves.png").read_bytes()
    assert (local / "test" / report.name).read_text() == report.read_text()
    assert (local / "test" / report.with_suffix(".md").name).read_text() == report.with_suffix(".md").read_text()


def test_wandb_offline_keeps_config_and_metrics_in_the_run_folder(tracked_run: Tuple[Path, Path, int]) -> None:
    run_dir, _, connections = tracked_run
    assert connections == 0
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (transactions,) = offline.glob("run-*.wandb")
    config: Dict[str, object] = {}
    history = []
    for record in wandb_records(transactions):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section in ("model", "data", "trainer", "logger"):
        assert config[section] == saved[section], section
    log = (run_dir / "train.log").read_text()
    assert config["memory_plan"] in log
    logged = [{name: round(row[name], 4) for name in ("val_loss", "val_accuracy", "val_NED")}
              for row in history if "val_loss" in row]
    assert logged == validation_lines(log)
    assert (offline / "files" / "curves.png").read_bytes() == (run_dir / "curves.png").read_bytes()


def test_logger_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'logger\.mlflow\.tracking_urii' \(did you mean 'logger\.mlflow\."
                                          r"tracking_uri'\?\)"):
        check_overrides("main", ["logger=mlflow", "logger.mlflow.tracking_urii=x"])
    with pytest.raises(ConfigError, match=r"unknown logger\.wandb key: 'logger\.wandb\.projetc' \(did you mean "
                                          r"'logger\.wandb\.project'\?\)"):
        run_loggers({"wandb": {"projetc": "x"}}, tmp_path, {})
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_compare_runs_reads_the_test_reports_of_mlflow_runs(tracked_run: Tuple[Path, Path, int], capsys,
                                                            tmp_path: Path) -> None:
    run_dir, store, _ = tracked_run
    (report,) = (run_dir / "checkpoints").glob("*.log_newTrue.*.json")
    compare_runs.main([str(report), "--names", "file", "--mlflow", str(store / "mlflow.db"), "--metric", "ned",
                       "--experiment", "vl4str-tiny"])
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\| Dataset +\| +file \| +run \|", lines[1])
    ned = json.loads(report.read_text())["datasets"]["SVT"]["ned"]
    rows = [line.split("|")[2:4] for line in lines if line.startswith("| SVT ")]  # in each table
    assert rows and all(row == [f" {ned:>8.2f} "] * 2 for row in rows), rows

    with pytest.raises(SystemExit):
        compare_runs.main(["--mlflow", str(store / "mlflow.db"), "--experiment", "vl4str-tiyn"])
    assert "no experiment 'vl4str-tiyn' (it has " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_runs.main(["--mlflow", str(tmp_path / "none.db")])
    assert f"--mlflow {tmp_path / 'none.db'}: no MLflow store there" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_test_py_sends_its_reports_to_the_runs_mlflow_run(tracked_run: Tuple[Path, Path, int],
                                                          data_root: Path) -> None:
    run_dir, store, _ = tracked_run
    proc = subprocess.run([sys.executable, str(REPO / "test.py"), str(run_dir), "--data_root", str(data_root),
                           "--datasets", "SVT", "--num_workers", "0"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = (run_dir / "checkpoints").glob("*.log_datasets_SVT.*.json")
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    assert report.name in [Path(a.path).name for a in client.list_artifacts(run_id, "test")]
    accuracy = json.loads(report.read_text())["groups"]["Test"]["accuracy"]
    assert client.get_run(run_id).data.metrics["test/Test/accuracy"] == pytest.approx(accuracy)
    assert f"Test reports sent to MLflow run {run_id}" in proc.stderr
