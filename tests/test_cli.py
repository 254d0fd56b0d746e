"""The evaluation, reading and benchmarking entry points (test.py, test.sh, read.py, read.sh, bench.py), run as a
user runs them, on a tiny model with random weights and on real word images."""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import REAL_COUNTS, REAL_SAMPLE
from hostile import Payload
from multiscript import SCRIPT_WORDS, gb2312_level1, script_fonts
from nltk import edit_distance

from strhub.evaluation.evaluate import (
    Result,
    caseless_charset,
    evaluate_checkpoint,
    format_report,
    format_table,
    protocol_charset,
)
from strhub.evaluation.groups import BenchmarkGroup
from strhub.models.checkpoint import best_checkpoint
from strhub.models.utils import create_model
from strhub.tools import render_words
from strhub.tools.create_lmdb import write_lmdb

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "misc" / "test_images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")



def run(args: List[str], env: Dict[str, str] = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def cjk_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` experiment over digits and the 3,755 level-1 Chinese characters, random weights but for heads
    that read 中 at every position."""
    torch.manual_seed(0)
    charset = "0123456789" + gb2312_level1()
    model = create_model("tiny", charset_train=charset, charset_test=charset)
    for decoder in (model.model.visual_decoder, model.model.cross_decoder):
        decoder.head.bias.data[charset.index("中") + 1] = 100.0  # id 0 is EOS
    path = tmp_path_factory.mktemp("checkpoint") / "tiny-zh.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def svt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose only benchmark, test/SVT, holds the ten images of misc/test_images."""
    root = tmp_path_factory.mktemp("data")
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    records = [((TEST_IMAGES / name).read_bytes(), label) for name, label in (line.split("\t") for line in lines)]
    write_lmdb(root / "test" / "SVT", records)
    return root


def test_table_has_the_original_layout() -> None:
    results = [Result("IIIT5k", 3000, 99.2, 99.71, 96.1, 5.48), Result("SVT", 647, 98.3, 99.5, 95.0, 5.9)]
    assert format_table(results).splitlines() == [
        "| Dataset  | # samples | Accuracy | 1 - NED | Confidence | Label Length |",
        "|:--------:|----------:|---------:|--------:|-----------:|-------------:|",
        "| IIIT5k   |      3000 |    99.20 |   99.71 |      96.10 |         5.48 |",
        "| SVT      |       647 |    98.30 |   99.50 |      95.00 |         5.90 |",
        "|----------|-----------|----------|---------|------------|--------------|",
        "| Combined |      3647 |    99.04 |   99.67 |      95.90 |         5.55 |",
    ]
    wide = format_table([Result("IC15_1811_long", 1, 0.0, 0.0, 0.0, 0.0)]).splitlines()
    assert wide[0].startswith("| Dataset        | # samples") and wide[1].startswith("|:--------------:|")


def test_report_keeps_evaluated_sets_and_ends_with_the_time_line() -> None:
    results = {"SVT": Result("SVT", 600, 50.0, 60.0, 70.0, 5.0)}
    groups = [BenchmarkGroup("Benchmark", (("IIIT5k", "IIIT5k"), ("SVT", "SVT"))),
              BenchmarkGroup("New", (("ArT", "ArT"),))]
    report = format_report(results, groups, seconds=3.0)
    assert report.startswith("Benchmark set:\n| Dataset ")
    assert "New set:" not in report and "IIIT5k" not in report
    assert report.endswith("\n\n\nTime: Total 3.00s, Average 5.00ms. Total samples 600. Throughput 200.0 images/s.\n")


def test_best_checkpoint_is_the_highest_readable_validation_accuracy(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch=0-step=10-val_accuracy=9.5000-val_NED=20.0000.ckpt", "last.ckpt",
                 "epoch=2-step=30-val_accuracy=80.2500-val_NED=90.0000.ckpt",
                 "epoch=3-step=40-val_accuracy=10.0000-val_NED=95.0000.ckpt"):
        torch.save({"state_dict": {}}, folder / name)
    assert best_checkpoint(tmp_path).name.startswith("epoch=2-step=30")
    assert best_checkpoint(folder).name.startswith("epoch=2-step=30")
    cut = folder / "epoch=4-step=50-val_accuracy=90.0000-val_NED=95.0000.ckpt"  # a write cut short
    cut.write_bytes((folder / "last.ckpt").read_bytes()[:100])
    assert best_checkpoint(tmp_path).name.startswith("epoch=2-step=30")
    assert f"skipping unreadable checkpoint {cut}" in caplog.text
    with pytest.raises(FileNotFoundError, match="val_accuracy"):
        best_checkpoint(tmp_path / "nothing")


def test_test_py_on_a_run_folder_picks_the_best_and_writes_reports(checkpoint: Path, svt_root: Path,
                                                                     tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    best = folder / "epoch=1-step=8-val_accuracy=55.5000-val_NED=60.0000.ckpt"
    for path in (folder / "epoch=0-step=4-val_accuracy=10.0000-val_NED=20.0000.ckpt", best, folder / "last.ckpt"):
        shutil.copy(checkpoint, path)
    proc = run([sys.executable, "test.py", str(tmp_path / "run"), "--data_root", str(svt_root), "--device", "cpu",
                "--num_workers", "0", "--batch_size", "4"])
    assert proc.returncode == 0, proc.stderr
    assert f"Best checkpoint by validation accuracy: {best}" in proc.stderr
    assert "benchmarks missing" in proc.stderr and "IIIT5k" in proc.stderr
    assert re.search(r"^\| SVT      \|        10 \|", proc.stdout, re.M)
    assert "Total samples 10." in proc.stdout
    (report,) = folder.glob(f"{best.name}.log_newFalse.*.md")
    markdown = report.read_text()
    assert markdown in proc.stdout and markdown.count("| Combined |") == 2 and "skipped" not in markdown
    summary = json.loads(report.with_suffix(".json").read_text())
    assert summary["datasets"]["SVT"]["num_samples"] == 10 and "CUTE80" in summary["missing"]
    assert summary["time"]["images_per_s"] > 0


def test_no_benchmark_found_is_an_error(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none of the benchmarks"):
        evaluate_checkpoint(checkpoint, tmp_path, device="cpu")


def test_undecodable_images_are_reported_as_skipped_even_at_batch_1(checkpoint: Path, svt_root: Path,
                                                                   tmp_path: Path) -> None:
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    records = [((TEST_IMAGES / name).read_bytes(), label) for name, label in (line.split("\t") for line in lines)]
    broken_root = tmp_path / "data"
    write_lmdb(broken_root / "test" / "SVT", records[:4] + [(b"not an image", "word")] + records[4:])
    model = tmp_path / "tiny.ckpt"
    shutil.copy(checkpoint, model)
    proc = run([sys.executable, "test.py", str(model), "--data_root", str(broken_root), "--device", "cpu",
                "--num_workers", "0", "--batch_size", "1", "--datasets", "SVT"])
    assert proc.returncode == 0, proc.stderr
    assert "| Dataset  | # samples | Accuracy | 1 - NED | Confidence | Label Length | # skipped |" in proc.stdout
    assert re.search(r"^\| SVT      \|        10 \|.*\|         1 \|$", proc.stdout, re.M)
    (report,) = tmp_path.glob("tiny.ckpt.log_datasets_SVT.*.json")
    assert json.loads(report.read_text())["datasets"]["SVT"]["skipped"] == 1

    evaluate_checkpoint(model, broken_root, batch_size=4, num_workers=0, device="cpu", datasets=["SVT"])
    evaluate_checkpoint(model, svt_root, batch_size=4, num_workers=0, device="cpu", datasets=["SVT"])
    summaries = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("tiny.ckpt.log_datasets_SVT.*.json"))]
    assert len(summaries) == 3  # one per data root and batch size: none overwrote another
    skipped = {(s["data_root"], s["batch_size"]): s["datasets"]["SVT"]["skipped"] for s in summaries}
    assert skipped == {(str(broken_root), 1): 1, (str(broken_root), 4): 1, (str(svt_root.resolve()), 4): 0}


def test_test_sh_on_the_real_benchmarks_counts_every_sample(checkpoint: Path, real_root: Path) -> None:
    proc = run(["bash", "scripts/test.sh", "cpu", checkpoint.name, "--num_workers", "1"],
               env={"DATA_ROOT": str(real_root), "OUTPUTS": str(checkpoint.parent)})
    assert proc.returncode == 0, proc.stderr
    for name, count in (*REAL_COUNTS.items(), ("Combined", sum(REAL_COUNTS.values()))):
        assert re.search(rf"^\| {name} +\| +{count} \|", proc.stdout, re.M), name
    assert proc.stdout.count("set:\n") == 2  # Benchmark (Subset) and Benchmark; nothing of New was found
    assert "ArT, COCOv1.4, HOST, IC13_1015, IC15_1811, IC15_2077, Uber, WOST" in proc.stderr


def test_read_py_prints_every_image_and_reports_a_corrupt_one(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not an image")
    shutil.copy(TEST_IMAGES / "demo_1.png", tmp_path / "demo_1.png")
    proc = run([sys.executable, "read.py", str(checkpoint), str(REAL_SAMPLE), str(tmp_path), "--device", "cpu",
                "--batch_size", "8", "--confidence"])
    assert proc.returncode == 1
    expected = sorted(p.relative_to(REAL_SAMPLE).as_posix() for p in REAL_SAMPLE.rglob("*")
                      if p.suffix in IMAGE_SUFFIXES) + ["demo_1.png"]
    lines = proc.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == expected
    assert all(re.fullmatch(r"\S+: \S* \((0|1)\.\d{4}\)", line) for line in lines), lines
    assert re.search(r"^broken\.png: error: UnidentifiedImageError", proc.stderr, re.M)


def test_read_py_on_a_run_folder_skips_a_hostile_best_file_without_running_it(checkpoint: Path,
                                                                              tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    hostile = folder / "epoch=1-step=8-val_accuracy=99.0000-val_NED=99.0000.ckpt"
    with open(hostile, "wb") as file:
        pickle.dump({"state_dict": Payload(tmp_path / "payload_ran")}, file)
    shutil.copy(checkpoint, folder / "epoch=0-step=4-val_accuracy=10.0000-val_NED=20.0000.ckpt")
    proc = run([sys.executable, "read.py", str(tmp_path / "run"), str(TEST_IMAGES / "demo_1.png"), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert f"skipping unreadable checkpoint {hostile}: refusing to load" in proc.stderr
    assert proc.stdout.startswith(f"{TEST_IMAGES / 'demo_1.png'}: ") and not (tmp_path / "payload_ran").exists()


def test_read_sh_json_output(checkpoint: Path) -> None:
    proc = run(["bash", "scripts/read.sh", "cpu", str(checkpoint), "misc/test_images", "--json"])
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["file"] for r in records] == sorted(p.name for p in TEST_IMAGES.iterdir() if p.suffix in IMAGE_SUFFIXES)
    assert all(isinstance(r["text"], str) and 0 <= r["confidence"] <= 1 for r in records)


def test_bench_py_reports_size_flops_and_speed() -> None:
    proc = run([sys.executable, "bench.py", "+experiment=tiny", "device=cpu", "throughput_batch=2",
                "min_run_time=0.05"])
    assert proc.returncode == 0, proc.stderr
    model = create_model("tiny")
    total = sum(p.numel() for p in model.parameters()) / 1e6
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    assert f"Parameters: {total:.2f} M total, {trainable:.2f} M trainable" in proc.stdout
    flops = float(re.search(r"FLOPs \(batch 1\): ([\d.]+) GFLOPs", proc.stdout).group(1))
    latency = float(re.search(r"Latency \(batch 1\): ([\d.]+) ms", proc.stdout).group(1))
    throughput = float(re.search(r"Throughput \(batch 2\): ([\d.]+) images/s", proc.stdout).group(1))
    assert flops > 0 and latency > 0 and throughput > 0


@pytest.mark.parametrize("experiment", ["str_adapter-mini", "parseq-mini"])
def test_test_py_read_py_and_bench_py_take_every_family(experiment: str, svt_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(experiment)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    proc = run([sys.executable, "test.py", str(path), "--data_root", str(svt_root), "--device", "cpu",
                "--num_workers", "0", "--batch_size", "4"])
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\| SVT      \|        10 \|", proc.stdout, re.M)
    proc = run(["bash", "scripts/read.sh", "cpu", str(path), "misc/test_images", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len([p for p in TEST_IMAGES.iterdir() if p.suffix in IMAGE_SUFFIXES])
    proc = run([sys.executable, "bench.py", f"+experiment={experiment}", "device=cpu", "throughput_batch=2",
                "min_run_time=0.05"])
    assert proc.returncode == 0, proc.stderr
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"Model: {model.hparams.name}," in proc.stdout and f"Parameters: {total:.2f} M total" in proc.stdout
    assert float(re.search(r"FLOPs \(batch 1\): ([\d.]+) GFLOPs", proc.stdout).group(1)) > 0


def test_test_py_full_charset_on_rendered_chinese_counts_the_set_minus_the_drops(cjk_checkpoint: Path,
                                                                                   tmp_path: Path) -> None:
    charset = "0123456789" + gb2312_level1()
    fonts = [font for font in script_fonts() if "wqy" in font]
    renderer = render_words.WordRenderer(charset, [Path(f) for f in fonts], SCRIPT_WORDS["Han"], 32, 0, 1, 12,
                                         (30, 40), "png", seed=0, word_share=0.8, vertical=0.3)
    records = list(render_words.render_split(renderer, "test", 30))
    image = records[0][0]
    # Too long, empty, trimmed, a space (removed: the charset has none), and the label nearest what the model reads.
    extra = [(image, "中" * 26), (image, "★☆"), (image, "北京★"), (image, "中 国"), (image, "中" * 25)]
    write_lmdb(tmp_path / "test" / "synth", records + extra)
    proc = run([sys.executable, "test.py", str(cjk_checkpoint), "--data_root", str(tmp_path), "--datasets", "synth",
                "--full_charset", "--device", "cpu", "--num_workers", "0", "--batch_size", "8"])
    assert proc.returncode == 0, proc.stderr
    assert "synth: 33 of 35 records kept (filtered too long: 1, empty: 1); 1 labels lost characters outside " \
           "the charset ('★' 1)" in proc.stderr
    assert re.search(r"^\| synth    \|        33 \|", proc.stdout, re.M) and "Total samples 33." in proc.stdout
    (report,) = cjk_checkpoint.parent.glob(f"{cjk_checkpoint.name}.log_datasets_synth.*.json")
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["label_filtering"]["synth"] == {"records": 35, "kept": 33, "filtered": {"too_long": 1, "empty": 1},
                                                   "trimmed": 1, "undecodable": 0}
    assert summary["charset_test"] == charset and not summary["normalize_unicode"] and summary["remove_whitespace"]
    result = summary["datasets"]["synth"]
    reading = "中" * 26  # every position, for want of an EOS
    kept = [label for _, label in records] + ["北京", "中国", "中" * 25]
    ned = sum(1 - edit_distance(reading, label) / len(reading) for label in kept) / len(kept)  # on code points
    assert result["accuracy"] == 0 and result["label_length"] == 26 and result["ned"] == pytest.approx(100 * ned)
    default = run([sys.executable, "test.py", str(cjk_checkpoint), "--data_root", str(tmp_path), "--datasets",
                   "synth", "--device", "cpu", "--num_workers", "0"])
    numbers = sum(label.isdigit() for _, label in records)  # the 36-character protocol deletes every other label
    assert default.returncode == 0 and 0 < numbers < 30
    assert f"synth: {numbers} of 35 records kept (filtered empty: {35 - numbers})" in default.stderr


def test_full_charset_protocol_charsets(checkpoint: Path) -> None:
    charset_train = create_model("tiny").hparams.charset_train
    assert protocol_charset(charset_train, False, False, False, False) == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert protocol_charset(charset_train, False, False, True, False) == charset_train
    assert protocol_charset("AbΩω", False, False, True, True) == "abω"
    assert caseless_charset("AaÉéΣσİ中") == "aéσi\u0307中"  # each case once; İ lowers to i and a combining dot
    with pytest.raises(ValueError, match="ignore_case applies to the full-charset protocol"):
        protocol_charset(charset_train, False, False, False, True)
    with pytest.raises(ValueError, match="cased and punctuation extend the 36-character protocol"):
        protocol_charset(charset_train, True, False, True, False)
    for flags, message in ((["--full_charset", "--cased"], "drop --cased and --punctuation"),
                           (["--ignore_case"], "--ignore_case goes with --full_charset")):
        proc = run([sys.executable, "test.py", str(checkpoint), *flags])
        assert proc.returncode == 2 and message in proc.stderr


def test_read_py_prints_text_in_any_script_unescaped(cjk_checkpoint: Path) -> None:
    image = str(TEST_IMAGES / "demo_1.png")
    plain = run([sys.executable, "read.py", str(cjk_checkpoint), image, "--device", "cpu"], env={"LC_ALL": "C"})
    assert plain.returncode == 0 and plain.stdout == f"{image}: {'中' * 26}\n"  # every position, for want of an EOS
    proc = run([sys.executable, "read.py", str(cjk_checkpoint), image, "--device", "cpu", "--json"])
    assert proc.returncode == 0 and f'"text": "{"中" * 26}"' in proc.stdout and "\\u" not in proc.stdout
    assert json.loads(proc.stdout)[0]["text"] == "中" * 26
