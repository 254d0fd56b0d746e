"""Print the results of several test.py runs side by side: one column per run (its JSON report,
`<checkpoint>.log_<selection>.json`), one row per test set, in the runs' tables, each ending with its Combined
(and Average) row. A set a run did not evaluate shows `-`.

    python -m strhub.tools.compare_runs base.json large.json --names base large --metric accuracy
"""
import argparse
import json
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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="test.py JSON reports")
    parser.add_argument("--names", nargs="+", help="column titles, one per report (default: checkpoint names)")
    parser.add_argument("--metric", choices=METRICS, default="accuracy", help="the value shown")
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.reports):
        parser.error(f"--names gives {len(args.names)} names for {len(args.reports)} reports")
    try:
        runs = [load_run(path) for path in args.reports]
    except ValueError as err:
        parser.error(str(err))
    print(format_comparison(runs, args.names or run_names(args.reports, runs), args.metric), end="")


if __name__ == "__main__":
    main()
