"""Print the results of several test.py runs side by side: one column per run (its JSON report,
`<checkpoint>.log_<selection>.json`), one row per test set, in the runs' tables, each ending with its Combined
(and Average) row. A set a run did not evaluate shows `-`.

    python -m strhub.tools.compare_runs base.json large.json --names base large --metric accuracy

With `--mlflow STORE` the MLflow runs that hold a test report (train.py ... logger=mlflow test_after_train=true)
are compared too, one column per run named as the run, oldest first: STORE is a tracking URI (http://host:5000,
sqlite:///path.db) or the path of a local store's .db file; `--experiment NAME` (repeatable) keeps those.

    python -m strhub.tools.compare_runs --mlflow outputs/mlflow.db --experiment vl4str-tiny
"""
import argparse
import json
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from strhub.tools.common import HelpFormatter

METRICS = ("accuracy", "ned", "confidence", "label_length", "num_samples")
Row = Tuple[str, str, str]  # (label, section of the report: datasets | groups | averages, key in it)


def load_run(path: Path) -> dict:
    """A test.py JSON report, with errors that name the file."""
    try:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON report ({err})") from None
    if not isinstance(run, dict) or not isinstance(run.get("datasets"), dict):
        raise ValueError(f"{path}: not a test.py report (no 'datasets')")
    return run


def layout(runs: Sequence[dict]) -> Dict[str, List[Row]]:
    """The tables of all runs, in order of first appearance, each its rows then Combined (and Average); sets that
    are in no table (reports written before tables were recorded) come last, under `Datasets`."""
    tables: Dict[str, List[Row]] = {}
    placed = set()
    for run in runs:
        for group, rows in run.get("tables", {}).items():
            entries = tables.setdefault(group, [])
            for label, folder in rows:
                if (label, "datasets", folder) not in entries:
                    entries.append((label, "datasets", folder))
                placed.add(folder)
    for group, rows in tables.items():
        rows.append(("Combined", "groups", group))
        if any(group in run.get("averages", {}) for run in runs):
            rows.append(("Average", "averages", group))
    rest = sorted({name for run in runs for name in run["datasets"]} - placed)
    if rest:
        tables["Datasets"] = [(name, "datasets", name) for name in rest]
    return tables


def format_comparison(runs: Sequence[dict], names: Sequence[str], metric: str = "accuracy") -> str:
    """A Markdown table per test group: a row per set, a column per run."""

    def cell(run: dict, section: str, key: str) -> str:
        value: Optional[float] = run.get(section, {}).get(key, {}).get(metric)
        if value is None:
            return "-"
        return str(int(value)) if metric == "num_samples" else f"{value:.2f}"

    parts = []
    for group, rows in layout(runs).items():
        width = max(len("Dataset"), *(len(label) for label, _, _ in rows))
        widths = [max(len(name), 8) for name in names]
        lines = ["| " + " | ".join([f"{'Dataset':<{width}}", *(f"{n:>{w}}" for n, w in zip(names, widths))]) + " |",
                 f"|:{'-' * width}:|" + "".join(f"{'-' * (w + 1)}:|" for w in widths)]
        for label, section, key in rows:
            cells = [f"{cell(run, section, key):>{w}}" for run, w in zip(runs, widths)]
            lines.append("| " + " | ".join([f"{label:<{width}}", *cells]) + " |")
        parts.append(f"{group} ({metric}):\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def run_names(paths: Sequence[Path], runs: Sequence[dict]) -> List[str]:
    """Each run's checkpoint file name; where those repeat, its report's file name; where those repeat too, its
    report's path."""
    for names in ([Path(run.get("checkpoint", path)).name for path, run in zip(paths, runs)],
                  [Path(path).name for path in paths]):
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


def mlflow_runs(store: str, experiments: Sequence[str]) -> List[Tuple[str, dict]]:
    """(run name, test report) of each run of the MLflow `store` (in `experiments`, or all) that logged a test
    report (its latest `test/*.json` artefact), oldest first; ValueError naming the store or experiment."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ValueError("--mlflow needs the mlflow package: pip install 'strhub[mlflow]'") from None
    local = store[len("sqlite:///"):] if store.startswith("sqlite:///") else None if "://" in store else store
    if local is not None and not Path(local).is_file():
        raise ValueError(f"--mlflow {store}: no MLflow store there (a local store is a .db file)")
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(local).absolute()}" if local is not None else store)
    try:
        found = client.search_experiments()
        chosen = [experiment for experiment in found if not experiments or experiment.name in experiments]
        unknown = sorted(set(experiments) - {experiment.name for experiment in found})
        if unknown:
            raise ValueError(f"--mlflow {store}: no experiment {', '.join(map(repr, unknown))} (it has "
                             f"{', '.join(repr(experiment.name) for experiment in found)})")
        runs = client.search_runs([experiment.experiment_id for experiment in chosen],
                                  order_by=["attributes.start_time ASC"]) if chosen else []
        reports = []
        with tempfile.TemporaryDirectory() as folder:
            for run in runs:
                files = sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id, "test")
                               if artifact.path.endswith(".json"))
                if files:
                    path = client.download_artifacts(run.info.run_id, files[-1], folder)
                    reports.append((run.info.run_name or run.info.run_id, load_run(Path(path))))
    except MlflowException as err:
        raise ValueError(f"--mlflow {store}: {err.message}") from None
    return reports


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("reports", type=Path, nargs="*", help="test.py JSON reports")
    parser.add_argument("--names", nargs="+", help="column titles, one per report (default: checkpoint names)")
    parser.add_argument("--metric", choices=METRICS, default="accuracy", help="the value shown")
    parser.add_argument("--mlflow", metavar="STORE", help="also the runs of this MLflow store that hold a test report")
    parser.add_argument("--experiment", action="append", default=[], help="with --mlflow: only this experiment's runs")
    args = parser.parse_args(argv)
    if not args.reports and args.mlflow is None:
        parser.error("give test.py JSON reports, --mlflow STORE, or both")
    if args.experiment and args.mlflow is None:
        parser.error("--experiment is for --mlflow runs")
    if args.names and len(args.names) != len(args.reports):
        parser.error(f"--names gives {len(args.names)} names for {len(args.reports)} reports")
    try:
        runs = [load_run(path) for path in args.reports]
        tracked = mlflow_runs(args.mlflow, args.experiment) if args.mlflow is not None else []
    except ValueError as err:
        parser.error(str(err))
    if args.mlflow is not None and not tracked:
        parser.error(f"--mlflow {args.mlflow}: no run there holds a test report (train with test_after_train=true)")
    names = (args.names or run_names(args.reports, runs)) if runs else []
    print(format_comparison([*runs, *(report for _, report in tracked)], [*names, *(name for name, _ in tracked)],
                            args.metric), end="")


if __name__ == "__main__":
    main()
