"""Benchmark evaluation of a checkpoint, as test.py reports it: per-dataset metrics, the original's
Markdown tables for each test group (strhub.evaluation.groups), and the Markdown, JSON and CSV files written beside the
checkpoint.

Two protocols: the original's (labels folded to ASCII, words compared on lowercase alphanumerics,
optionally with case and punctuation), and the full-charset one for any script (labels as written in
NFC, compared on every character of the model's charset, optionally ignoring case). Both compute
1 - NED on code points."""
import functools
import logging
import string
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from strhub.data.dataset import LmdbDataset
from strhub.data.module import SceneTextDataModule
from strhub.evaluation.failures import SampleLog
from strhub.evaluation.groups import DEFAULT_PROTOCOL, BenchmarkGroup, label_lengths, select_groups
from strhub.evaluation.reports import report_name, write_reports
from strhub.host import choose_precision, default_device, inference_precision, worker_count
from strhub.models.checkpoint import read_checkpoint

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """An evaluation that cannot be made with these settings and data; the message says which."""


@dataclass
class Result:
    """Metrics of one dataset (or of a group, `Combined`), in percent except the label length, over its
    `num_samples` evaluated samples; `skipped` counts the samples left out because their image did not decode."""

    dataset: str
    num_samples: int
    accuracy: float
    ned: float  # 1 - NED
    confidence: float
    label_length: float
    skipped: int = 0


def evaluation_charset(cased: bool = False, punctuation: bool = False) -> str:
    """The evaluation charset: lowercase alphanumerics, plus upper case and punctuation on request."""
    charset = string.digits + string.ascii_lowercase
    if cased:
        charset += string.ascii_uppercase
    if punctuation:
        charset += string.punctuation
    return charset


def caseless_charset(charset: str) -> str:
    """The lower case of every character of `charset`, once each: as a test charset, it folds labels
    and predictions to lower case (characters without case are unchanged)."""
    return "".join(dict.fromkeys(charset.lower()))


def combine(results: Sequence[Result]) -> Result:
    """Sample-weighted means of several datasets."""
    total = sum(r.num_samples for r in results)

    def mean(field: str) -> float:
        return sum(r.num_samples * getattr(r, field) for r in results) / total

    return Result("Combined", total, mean("accuracy"), mean("ned"), mean("confidence"), mean("label_length"),
                  sum(r.skipped for r in results))


def average(results: Sequence[Result]) -> Result:
    """Unweighted means of several datasets (the average a benchmark such as Union14M reports), with their total
    sample count."""

    def mean(field: str) -> float:
        return sum(getattr(r, field) for r in results) / len(results)

    return Result("Average", sum(r.num_samples for r in results), mean("accuracy"), mean("ned"), mean("confidence"),
                  mean("label_length"), sum(r.skipped for r in results))


def format_table(results: Sequence[Result], with_average: bool = False) -> str:
    """The original test.py's Markdown table, with a `Combined` row (and an `Average` row on request), and a
    `# skipped` column (samples whose image did not decode, left out of the others) when any sample was skipped."""
    w = max([len("Dataset"), len("Combined")] + [len(r.dataset) for r in results])
    skips = any(r.skipped for r in results)

    def row(r: Result) -> str:
        return (f"| {r.dataset:<{w}} | {r.num_samples:>9} | {r.accuracy:>8.2f} | {r.ned:>7.2f} "
                f"| {r.confidence:>10.2f} | {r.label_length:>12.2f} |" + (f" {r.skipped:>9} |" if skips else ""))

    lines = [f"| {'Dataset':<{w}} | # samples | Accuracy | 1 - NED | Confidence | Label Length |"
             + (" # skipped |" if skips else ""),
             f"|:{'----':-<{w}}:|----------:|---------:|--------:|-----------:|-------------:|"
             + ("----------:|" if skips else ""),
             *map(row, results),
             f"|-{'----':-<{w}}-|-----------|----------|---------|------------|--------------|"
             + ("-----------|" if skips else ""),
             row(combine(results))]
    if with_average:
        lines.append(row(average(results)))
    return "\n".join(lines)


def group_rows(results: Dict[str, Result], group: BenchmarkGroup) -> List[Result]:
    """A group's evaluated datasets, in its order, named by their row labels."""
    return [replace(results[folder], dataset=label) for label, folder in group.datasets if folder in results]


def format_report(results: Dict[str, Result], groups: Sequence[BenchmarkGroup], seconds: float) -> str:
    """Every group's table (datasets that were not evaluated are left out), then the time line."""
    parts = []
    for group in groups:
        rows = group_rows(results, group)
        if rows:
            parts.append(f"{group.name} set:\n{format_table(rows, group.average)}\n\n\n")
    samples = sum(r.num_samples for r in results.values())
    parts.append(f"Time: Total {seconds:.2f}s, Average {1000 * seconds / samples:.2f}ms. "
                 f"Total samples {samples}. Throughput {samples / seconds:.1f} images/s.\n")
    return "".join(parts)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loaders: Dict[str, DataLoader], device: torch.device,
             precision: str = "32", samples: Optional[SampleLog] = None) -> Dict[str, Result]:
    """Runs `model.test_step` over each dataset's loader (with a progress bar) and aggregates the metrics; images
    that do not decode are left out and counted as skipped. `samples`, if given, collects every sample."""
    results = {}
    width = max(map(len, loaders))
    for name, loader in loaders.items():
        total = correct = ned = confidence = label_length = 0.0
        for batch_idx, batch in enumerate(tqdm(loader, desc=f"{name:>{width}}", unit="batch")):
            if batch is None:  # no image of the batch decoded
                continue
            images, labels = batch
            with inference_precision(model, device, precision):
                res = model.test_step((images.to(device), labels), batch_idx)
            if samples is not None:
                samples.add(name, labels, res)
            total += res.num_samples
            correct += res.correct
            ned += res.ned
            confidence += res.confidence
            label_length += res.label_length
        if samples is not None:
            samples.close(name, loader.dataset)
        skipped = loader.dataset.num_skipped
        if skipped:
            log.warning("%s: %d images did not decode and are left out of its metrics", name, skipped)
        if total == 0:
            log.warning("%s: no sample left after label filtering and decoding, skipped", name)
            continue
        results[name] = Result(name, int(total), 100 * correct / total, 100 * (1 - ned / total),
                               100 * confidence / total, label_length / total, skipped)
    return results


def label_filtering(dataset: LmdbDataset) -> Dict[str, Any]:
    """What the label filter did to a test set: its records, those kept, the dropped ones per reason,
    the kept labels that lost characters outside the charset, and the images that did not decode."""
    return {"records": dataset.total, "kept": len(dataset), "filtered": dict(dataset.filtered),
            "trimmed": dataset.num_trimmed, "undecodable": dataset.num_skipped}


def protocol_charset(charset_train: str, cased: bool, punctuation: bool, full_charset: bool,
                     ignore_case: bool) -> str:
    """The test charset of a protocol: the original's (see `evaluation_charset`), or the model's
    training charset (an override, or else the checkpoint's), folded to lower case when `ignore_case`."""
    if not full_charset:
        if ignore_case:
            raise EvaluationError("ignore_case applies to the full-charset protocol; the default one ignores case "
                                  "already")
        return evaluation_charset(cased, punctuation)
    if cased or punctuation:
        raise EvaluationError("cased and punctuation extend the 36-character protocol; full_charset compares every "
                              "character of the model's charset already")
    return caseless_charset(charset_train) if ignore_case else charset_train


def evaluate_checkpoint(checkpoint: Path, data_root: Path, batch_size: int = 512, num_workers: Optional[int] = None,
                        cased: bool = False, punctuation: bool = False, full_charset: bool = False,
                        ignore_case: bool = False, new: bool = False, rotation: int = 0, openai_meanstd: bool = False,
                        device: Optional[str] = None, precision: str = "32", model_kwargs: Optional[dict] = None,
                        datasets: Sequence[str] = (), protocol: str = DEFAULT_PROTOCOL,
                        groups: Sequence[str] = (), errors: Optional[Path] = None,
                        output: Optional[Path] = None) -> str:
    """Evaluates a checkpoint (a file, or a run folder whose best checkpoint is taken) on the test sets under
    `data_root/test` of the protocol's groups, `new`'s and the extra `groups` (names in configs/test_groups or YAML
    files; see strhub.evaluation.groups), or on the named `datasets` there as one `Test` group. Prints the report,
    then writes it into `output`, or else beside the checkpoint (into the current directory where that folder cannot
    be written: see strhub.evaluation.reports), as `<checkpoint>.log_<selection>.<settings>.md`, `.json` and `.csv`
    (one row per dataset); the default selection is named `new<new>`, and `<settings>` is a digest of what the
    numbers depend on (data root, test sets, charset, label settings, transforms, batch size, precision, model
    overrides), so that different evaluations never overwrite each other. Images are normalised with mean = std =
    0.5 as in the original's test protocol, or with CLIP's mean/std when `openai_meanstd`. `num_workers`
    data-loading processes (default: 4, or the usable CPUs if fewer). With `errors`, every sample goes to
    `errors/samples.csv` and each benchmark's misread images to contact sheets in `errors/<benchmark>/`.

    With `full_charset`, labels are kept as written (NFC; whitespace too when the model's charset holds
    it) and compared on the model's whole training charset, which also filters the cross-modal
    branch's captions; `ignore_case` folds both sides to lower case. Otherwise labels are folded to
    ASCII and compared on lowercase alphanumerics, plus upper case (`cased`) and punctuation."""
    selection, test_groups = select_groups(protocol, new, groups, datasets)
    device = default_device(device)
    precision = choose_precision(precision, device)
    num_workers = worker_count(4) if num_workers is None else num_workers
    read = read_checkpoint(checkpoint, model_kwargs, system=True)
    checkpoint = read.path
    read.config["charset_test"] = protocol_charset(read.config["charset_train"], cased, punctuation, full_charset,
                                                   ignore_case)
    model = read.build(system=True).eval().to(device)
    hp = model.hparams
    remove_whitespace = not (full_charset and any(char.isspace() for char in hp.charset_test))
    lengths = label_lengths(test_groups, hp.max_label_length)

    @functools.lru_cache(maxsize=None)
    def datamodule(max_label_length: int) -> SceneTextDataModule:
        return SceneTextDataModule(str(data_root), "_unused_", hp.img_size, max_label_length, hp.charset_train,
                                   hp.charset_test, batch_size, num_workers, False,
                                   remove_whitespace=remove_whitespace, normalize_unicode=not full_charset,
                                   rotation=rotation, test_openai_meanstd=openai_meanstd)

    present, missing = datamodule(hp.max_label_length).split_test_names(sorted(lengths))
    if not present:
        raise FileNotFoundError(f"none of the benchmarks {', '.join(missing)} is in {data_root / 'test'} "
                                "(expected test/<name>/data.mdb)")
    if missing:
        log.warning("benchmarks missing from %s, skipped: %s", data_root / "test", ", ".join(missing))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loaders: Dict[str, DataLoader] = {}
    for length in sorted(set(lengths[name] for name in present)):
        loaders.update(datamodule(length).test_dataloaders([name for name in present if lengths[name] == length]))
    sample_log = SampleLog() if errors is not None else None
    results = evaluate(model, loaders, device, precision, sample_log)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if not results:
        raise EvaluationError(f"no benchmark under {data_root / 'test'} has a sample left after label filtering (the "
                              f"test charset is {len(hp.charset_test)} characters, labels up to "
                              f"{max(lengths.values())} long)")

    report = format_report(results, test_groups, seconds)
    settings = {"data_root": str(data_root.resolve()), "datasets": sorted(results), "charset_test": hp.charset_test,
                "normalize_unicode": not full_charset, "remove_whitespace": remove_whitespace,
                "rotation": rotation, "openai_meanstd": openai_meanstd, "batch_size": batch_size,
                "precision": precision, "model_kwargs": model_kwargs or {}}
    print(report, end="")
    samples = sum(r.num_samples for r in results.values())
    evaluated = [group for group in test_groups if any(n in results for n in group.folders)]
    summary = {
        "checkpoint": str(checkpoint), **settings, "device": str(device),
        "selection": selection,
        "datasets": {name: asdict(r) for name, r in results.items()},
        "groups": {group.name: asdict(combine(group_rows(results, group))) for group in evaluated},
        "averages": {group.name: asdict(average(group_rows(results, group))) for group in evaluated if group.average},
        "tables": {group.name: [[label, folder] for label, folder in group.datasets] for group in evaluated},
        "max_label_length": {name: lengths[name] for name in results},
        "label_filtering": {name: label_filtering(loader.dataset) for name, loader in loaders.items()},
        "missing": missing,
        "time": {"total_s": seconds, "average_ms": 1000 * seconds / samples, "samples": samples,
                 "images_per_s": samples / seconds},
    }
    stem = write_reports(report_name(checkpoint, selection, settings), checkpoint, output, report, summary, results,
                         lengths, {"checkpoint": str(checkpoint), "selection": selection, **settings,
                                   "device": str(device)})
    log.info("Report written to %s.md, .json and .csv", stem)
    if sample_log is not None:
        written = sample_log.write(errors)
        log.info("Samples written to %s, error galleries: %d pages", written[0], len(written) - 1)
    return report
