"""Benchmark evaluation of a checkpoint, as test.py reports it: per-dataset metrics, the original's
Markdown tables, and the Markdown and JSON files written beside the checkpoint.

Two protocols: the original's (labels folded to ASCII, words compared on lowercase alphanumerics,
optionally with case and punctuation), and the full-charset one for any script (labels as written in
NFC, compared on every character of the model's charset, optionally ignoring case). Both compute
1 - NED on code points."""
import json
import logging
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from strhub.cli import autocast_context, default_device
from strhub.data.dataset import LmdbDataset
from strhub.data.module import SceneTextDataModule
from strhub.models.checkpoint import best_checkpoint, read_model_checkpoint
from strhub.models.utils import load_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Result:
    """Metrics of one dataset (or of a group, `Combined`), in percent except the label length."""

    dataset: str
    num_samples: int
    accuracy: float
    ned: float  # 1 - NED
    confidence: float
    label_length: float


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

    return Result("Combined", total, mean("accuracy"), mean("ned"), mean("confidence"), mean("label_length"))


def format_table(results: Sequence[Result]) -> str:
    """The original test.py's Markdown table, with a `Combined` row."""
    w = max([len("Dataset"), len("Combined")] + [len(r.dataset) for r in results])

    def row(r: Result) -> str:
        return (f"| {r.dataset:<{w}} | {r.num_samples:>9} | {r.accuracy:>8.2f} | {r.ned:>7.2f} "
                f"| {r.confidence:>10.2f} | {r.label_length:>12.2f} |")

    lines = [f"| {'Dataset':<{w}} | # samples | Accuracy | 1 - NED | Confidence | Label Length |",
             f"|:{'----':-<{w}}:|----------:|---------:|--------:|-----------:|-------------:|",
             *map(row, results),
             f"|-{'----':-<{w}}-|-----------|----------|---------|------------|--------------|",
             row(combine(results))]
    return "\n".join(lines)


def result_groups(new: bool) -> Dict[str, Sequence[str]]:
    """Table groups of the original: both benchmark lists, and the new benchmarks on request."""
    groups = {"Benchmark (Subset)": SceneTextDataModule.TEST_BENCHMARK_SUB,
              "Benchmark": SceneTextDataModule.TEST_BENCHMARK}
    if new:
        groups["New"] = SceneTextDataModule.TEST_NEW
    return groups


def format_report(results: Dict[str, Result], groups: Dict[str, Sequence[str]], seconds: float) -> str:
    """Every group's table (datasets that were not evaluated are left out), then the time line."""
    parts = []
    for group, names in groups.items():
        rows = [results[name] for name in names if name in results]
        if rows:
            parts.append(f"{group} set:\n{format_table(rows)}\n\n\n")
    samples = sum(r.num_samples for r in results.values())
    parts.append(f"Time: Total {seconds:.2f}s, Average {1000 * seconds / samples:.2f}ms. "
                 f"Total samples {samples}. Throughput {samples / seconds:.1f} images/s.\n")
    return "".join(parts)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loaders: Dict[str, DataLoader], device: torch.device,
             precision: str = "32") -> Dict[str, Result]:
    """Runs `model.test_step` over each dataset's loader (with a progress bar) and aggregates the metrics."""
    results = {}
    width = max(map(len, loaders))
    for name, loader in loaders.items():
        total = correct = ned = confidence = label_length = 0.0
        for batch_idx, (images, labels) in enumerate(tqdm(loader, desc=f"{name:>{width}}", unit="batch")):
            with autocast_context(device, precision):
                res = model.test_step((images.to(device), labels), batch_idx)
            total += res.num_samples
            correct += res.correct
            ned += res.ned
            confidence += res.confidence
            label_length += res.label_length
        if total == 0:
            log.warning("%s: no sample left after label filtering, skipped", name)
            continue
        results[name] = Result(name, int(total), 100 * correct / total, 100 * (1 - ned / total),
                               100 * confidence / total, label_length / total)
    return results


def label_filtering(dataset: LmdbDataset) -> Dict[str, Any]:
    """What the label filter did to a test set: its records, those kept, the dropped ones per reason,
    the kept labels that lost characters outside the charset, and the images that did not decode."""
    return {"records": dataset.total, "kept": len(dataset), "filtered": dict(dataset.filtered),
            "trimmed": dataset.num_trimmed, "undecodable": dataset.num_skipped}


def protocol_charset(checkpoint: Path, overrides: Dict[str, Any], cased: bool, punctuation: bool, full_charset: bool,
                     ignore_case: bool) -> str:
    """The test charset of a protocol: the original's (see `evaluation_charset`), or the model's
    training charset (an override, or else the checkpoint's), folded to lower case when `ignore_case`."""
    if not full_charset:
        if ignore_case:
            raise ValueError("ignore_case applies to the full-charset protocol; the default one ignores case already")
        return evaluation_charset(cased, punctuation)
    if cased or punctuation:
        raise ValueError("cased and punctuation extend the 36-character protocol; full_charset compares every "
                         "character of the model's charset already")
    charset = overrides.get("charset_train") or read_model_checkpoint(checkpoint, overrides)[1]["charset_train"]
    return caseless_charset(charset) if ignore_case else charset


def evaluate_checkpoint(checkpoint: Path, data_root: Path, batch_size: int = 512, num_workers: int = 4,
                        cased: bool = False, punctuation: bool = False, full_charset: bool = False,
                        ignore_case: bool = False, new: bool = False, rotation: int = 0, openai_meanstd: bool = False,
                        device: Optional[str] = None, precision: str = "32", model_kwargs: Optional[dict] = None,
                        datasets: Sequence[str] = ()) -> str:
    """Evaluates a checkpoint (a file, or a run folder whose best checkpoint is taken) on the benchmarks found
    under `data_root/test` (or on the named `datasets` there, as one `Test` group), prints the report and writes
    it beside the checkpoint as `<checkpoint>.log_new<new>.md` and `.json`. Images are normalised with
    mean = std = 0.5 as in the original's test protocol, or with CLIP's mean/std when `openai_meanstd`.

    With `full_charset`, labels are kept as written (NFC; whitespace too when the model's charset holds
    it) and compared on the model's whole training charset, which also filters the cross-modal
    branch's captions; `ignore_case` folds both sides to lower case. Otherwise labels are folded to
    ASCII and compared on lowercase alphanumerics, plus upper case (`cased`) and punctuation."""
    if checkpoint.is_dir():
        checkpoint = best_checkpoint(checkpoint)
        print(f"Best checkpoint by validation accuracy: {checkpoint}")
    elif not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    device = default_device(device)
    kwargs = dict(model_kwargs or {})
    kwargs["charset_test"] = protocol_charset(checkpoint, kwargs, cased, punctuation, full_charset, ignore_case)
    model = load_from_checkpoint(str(checkpoint), **kwargs).eval().to(device)
    hp = model.hparams
    remove_whitespace = not (full_charset and any(char.isspace() for char in hp.charset_test))
    datamodule = SceneTextDataModule(str(data_root), "_unused_", hp.img_size, hp.max_label_length, hp.charset_train,
                                     hp.charset_test, batch_size, num_workers, False,
                                     remove_whitespace=remove_whitespace, normalize_unicode=not full_charset,
                                     rotation=rotation, test_openai_meanstd=openai_meanstd)
    groups = {"Test": list(datasets)} if datasets else result_groups(new)
    present, missing = datamodule.split_test_names(sorted(set(name for names in groups.values() for name in names)))
    if not present:
        raise FileNotFoundError(f"none of the benchmarks {', '.join(missing)} is in {data_root / 'test'} "
                                "(expected test/<name>/data.mdb)")
    if missing:
        log.warning("benchmarks missing from %s, skipped: %s", data_root / "test", ", ".join(missing))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loaders = datamodule.test_dataloaders(present)
    results = evaluate(model, loaders, device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if not results:
        raise ValueError(f"no benchmark under {data_root / 'test'} has a sample left after label filtering")

    report = format_report(results, groups, seconds)
    stem = f"{checkpoint}.log_new{new}"
    Path(f"{stem}.md").write_text(report, encoding="utf-8")
    samples = sum(r.num_samples for r in results.values())
    summary = {
        "checkpoint": str(checkpoint), "data_root": str(data_root), "charset_test": hp.charset_test,
        "normalize_unicode": not full_charset, "remove_whitespace": remove_whitespace,
        "rotation": rotation, "openai_meanstd": openai_meanstd, "batch_size": batch_size, "device": str(device),
        "precision": precision,
        "datasets": {name: asdict(r) for name, r in results.items()},
        "groups": {group: asdict(combine([results[n] for n in names if n in results]))
                   for group, names in groups.items() if any(n in results for n in names)},
        "label_filtering": {name: label_filtering(loader.dataset) for name, loader in loaders.items()},
        "missing": missing,
        "time": {"total_s": seconds, "average_ms": 1000 * seconds / samples, "samples": samples,
                 "images_per_s": samples / seconds},
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report, end="")
    return report
