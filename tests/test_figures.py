"""The figures outside the attention maps: test.py's error galleries and CSV of every sample, and the training
curves of a run's CSV logs, resumed starts joined."""
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from strhub.evaluation.evaluate import evaluate_checkpoint
from strhub.evaluation.failures import CSV_NAME, SampleLog, misread
from strhub.evaluation.figures import SHEET_COLUMNS, SHEET_ROWS
from strhub.models.base import BatchResult
from strhub.tools import plot_run
from strhub.tools.create_lmdb import write_lmdb

TEST_IMAGES = Path(__file__).resolve().parents[1] / "misc" / "test_images"


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_errors_csv_rows_match_the_table_and_skip_undecodable_records(tmp_path, checkpoint):
    lines = [line.split("\t") for line in (TEST_IMAGES / "labels.tsv").read_text().splitlines()]
    records = [((TEST_IMAGES / name).read_bytes(), label) for name, label in lines]
    records.insert(3, (b"not an image", "broken"))  # record 4 does not decode
    root = tmp_path / "data"
    write_lmdb(root / "test" / "SVT", records)
    errors = tmp_path / "errors"
    with pytest.warns(UserWarning, match="image-000000004 could not be decoded"):
        evaluate_checkpoint(checkpoint, root, batch_size=4, num_workers=0, device="cpu", errors=errors)
    (report,) = checkpoint.parent.glob(f"{checkpoint.name}.log_newFalse.*.json")
    result = json.loads(report.read_text())["datasets"]["SVT"]
    rows = _read_csv(errors / CSV_NAME)
    assert list(rows[0]) == ["dataset", "index", "label", "prediction", "confidence", "correct"]
    assert len(rows) == result["num_samples"] == len(lines) and result["skipped"] == 1
    assert [int(row["index"]) for row in rows] == [1, 2, 3] + list(range(5, len(records) + 1))
    assert [row["label"] for row in rows] == [label.lower() for _, label in lines]
    assert 100 * sum(row["correct"] == "True" for row in rows) / len(rows) == pytest.approx(result["accuracy"])
    mean_confidence = 100 * sum(float(row["confidence"]) for row in rows) / len(rows)
    assert mean_confidence == pytest.approx(result["confidence"])
    (page,) = sorted((errors / "SVT").iterdir())
    assert page.name == "errors_001.png"
    with Image.open(page) as image:
        assert 700 <= image.width <= 1000 and 300 <= image.height <= 1000, image.size


def test_galleries_page_the_misread_samples_most_confident_first(tmp_path):
    n = SHEET_COLUMNS * SHEET_ROWS + 5
    root = tmp_path / "lmdb"
    image = (TEST_IMAGES / "demo_1.png").read_bytes()
    write_lmdb(root, [(image, f"w{i}") for i in range(n + 3)])
    log = SampleLog()
    labels = [f"w{i}" for i in range(n + 3)]
    predictions = ["wrong"] * n + labels[n:]  # the last three are read correctly
    confidences = [(i * 37 % n) / n for i in range(n + 3)]
    log.add("set", labels, BatchResult(n + 3, 3, 0.0, 0.0, 0, None, 0, predictions, confidences))
    dataset = type("FakeDataset", (), {"root": str(root), "decoded_records": lambda self: list(range(1, n + 4))})()
    log.close("set", dataset)
    written = log.write(tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        CSV_NAME, "set/errors_001.png", "set/errors_002.png"]
    ordered = misread(log.samples["set"])
    assert len(ordered) == n and all(not s.correct for s in ordered)
    assert [s.confidence for s in ordered] == sorted(confidences[:n], reverse=True)
    with Image.open(written[1]) as first, Image.open(written[2]) as last:
        assert first.height > last.height and first.width == last.width


def _metrics(path: Path, rows) -> None:
    path.parent.mkdir(parents=True)
    columns = ["epoch", "loss", "lr-AdamW/pg1", "step", "val_NED", "val_accuracy", "val_loss"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


def test_plot_run_joins_the_starts_of_a_resumed_run(tmp_path):
    run = tmp_path / "run"
    first = [{"step": s, "loss": 10 - s, "lr-AdamW/pg1": 0.1} for s in range(8)]
    first.append({"step": 3, "val_accuracy": 1.0, "val_NED": 5.0, "val_loss": 9.0})
    second = [{"step": s, "loss": 100 + s, "lr-AdamW/pg1": 0.2} for s in range(4, 10)]  # resumed at step 4
    second.append({"step": 7, "val_accuracy": 2.0, "val_NED": 6.0, "val_loss": 8.0})
    _metrics(run / "csv" / "version_0" / "metrics.csv", first)
    _metrics(run / "csv" / "version_1" / "metrics.csv", second)
    columns, starts = plot_run.join_starts([plot_run.read_metrics(p) for p in plot_run.metric_files(run)])
    assert starts == [4]
    assert columns["loss"] == [(s, 10.0 - s) for s in range(4)] + [(s, 100.0 + s) for s in range(4, 10)]
    assert columns["val_accuracy"] == [(3, 1.0), (7, 2.0)]
    plot_run.main([str(run)])
    with Image.open(run / "curves.png") as image:
        assert image.size == (640, 720)


def test_plot_run_names_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV logs"):
        plot_run.plot_run(tmp_path)
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("step,loss\n3,abc\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 2"):
        plot_run.plot_run(tmp_path)
