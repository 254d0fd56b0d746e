"""The report files of an evaluation (Markdown, JSON and CSV), written beside the checkpoint, or where they can be.

A released checkpoint often sits in a folder the user cannot write (a read-only mount, a shared download): the
reports then go to the current directory, and the user is told where; `--output DIR` chooses the folder outright.
"""
import csv
import hashlib
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

log = logging.getLogger(__name__)


class ReportWriteError(OSError):
    """No folder the reports could be written to; the message names them and the option that chooses one."""


def report_name(checkpoint: Path, selection: str, settings: Dict[str, object]) -> str:
    """The report files' name without suffix: the checkpoint's, the selection of groups and a digest of the
    settings the numbers depend on."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{checkpoint.name}.log_{selection}.{digest}"


def write_csv(path: Path, results: Mapping[str, Any], lengths: Dict[str, int], context: Dict[str, object]) -> None:
    """One row per dataset (`results`: dataclass rows by name): the `context` columns (checkpoint, settings), the
    dataset's metrics and its length filter; rows of several checkpoints' files concatenate into one table."""
    first = next(iter(results.values()))
    columns = [*context, *(f.name for f in fields(first)), "max_label_length"]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for name, result in sorted(results.items()):
            writer.writerow({**context, **asdict(result), "max_label_length": lengths[name]})


def write_reports(name: str, checkpoint: Path, output: Optional[Path], report: str, summary: Dict[str, Any],
                  results: Mapping[str, Any], lengths: Dict[str, int], context: Dict[str, object]) -> Path:
    """Writes `<name>.md`, `.json` and `.csv` into `output`, or else beside the checkpoint, or, where that folder
    cannot be written, into the current directory; returns the path without suffix."""
    folders: Sequence[Path] = [output] if output is not None else [checkpoint.parent, Path.cwd()]
    failures = []
    for folder in dict.fromkeys(path.resolve() for path in folders):
        stem = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            Path(f"{stem}.md").write_text(report, encoding="utf-8")
            Path(f"{stem}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            write_csv(Path(f"{stem}.csv"), results, lengths, context)
        except OSError as err:
            failures.append(f"{folder} ({err.strerror or err})")
            continue
        if failures:
            log.warning("cannot write the reports to %s: written to %s instead (choose with --output DIR)",
                        failures[0], folder)
        return stem
    raise ReportWriteError(f"cannot write the reports to {' nor '.join(failures)}: choose a folder with --output DIR "
                           f"(the table above is the whole result)")
