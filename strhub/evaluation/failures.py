"""Which words a model misreads: every evaluated sample of each benchmark in one CSV, and per benchmark contact
sheets of its misread images, most confident first (`test.py --errors DIR`)."""
import csv
import io
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Dict, List, Sequence

from PIL import Image
from tqdm import tqdm

from strhub.data.dataset import LmdbDataset, shared_env
from strhub.data.transforms import to_rgb
from strhub.evaluation.figures import SHEET_COLUMNS, SHEET_ROWS, contact_sheet, save_png
from strhub.models.base import BatchResult

CSV_NAME = "samples.csv"


@dataclass
class Sample:
    """One evaluated sample: its benchmark, its LMDB record number (`image-%09d`), the label and the prediction
    (both on the test charset, as compared), the prediction's confidence and whether it is correct."""

    dataset: str
    index: int
    label: str
    prediction: str
    confidence: float
    correct: bool


class SampleLog:
    """Collects the samples of each benchmark as `evaluation.evaluate.evaluate` runs: `add` per batch, `close` once a
    benchmark's loader is done (the record numbers are known then), `write` at the end."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[Sample]] = {}
        self.roots: Dict[str, Path] = {}
        self._pending: Dict[str, List[Sample]] = {}

    def add(self, dataset: str, labels: Sequence[str], result: BatchResult) -> None:
        self._pending.setdefault(dataset, []).extend(
            Sample(dataset, -1, label, prediction, confidence, prediction == label)
            for label, prediction, confidence in zip(labels, result.predictions, result.confidences))

    def close(self, name: str, dataset: LmdbDataset) -> None:
        """Gives the samples of `name` their record numbers; they are dropped if the benchmark gave no sample."""
        pending = self._pending.pop(name, [])
        records = dataset.decoded_records()
        if len(records) != len(pending):
            raise RuntimeError(f"{dataset.root}: {len(pending)} samples evaluated but {len(records)} records decoded")
        if pending:
            for sample, record in zip(pending, records):
                sample.index = record
            self.samples[name] = pending
            self.roots[name] = Path(dataset.root)

    def write(self, out: Path) -> List[Path]:
        """`out/samples.csv` (every sample) and `out/<benchmark>/errors_NNN.png` (its misread images, most
        confident first, SHEET_COLUMNS x SHEET_ROWS a page); returns the files written."""
        out.mkdir(parents=True, exist_ok=True)
        written = [out / CSV_NAME]
        with open(written[0], "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow([f.name for f in fields(Sample)])
            for name in sorted(self.samples):
                writer.writerows(astuple(sample) for sample in self.samples[name])
        for name in sorted(self.samples):
            written += write_gallery(out / name, name, self.roots[name], self.samples[name])
        return written


def read_image(root: Path, index: int) -> Image.Image:
    """Record `index` of the LMDB at `root`, as RGB."""
    with shared_env(root).begin() as txn:
        buffer = txn.get(f"image-{index:09d}".encode())
    with Image.open(io.BytesIO(buffer)) as image:
        return to_rgb(image.copy())


def misread(samples: Sequence[Sample]) -> List[Sample]:
    """The misread samples, most confident first (then by record number)."""
    return sorted((s for s in samples if not s.correct), key=lambda s: (-s.confidence, s.index))


def write_gallery(folder: Path, name: str, root: Path, samples: Sequence[Sample]) -> List[Path]:
    """The contact sheets of the misread `samples` of benchmark `name`, most confident first."""
    errors = misread(samples)
    per_page = SHEET_COLUMNS * SHEET_ROWS
    pages = (len(errors) + per_page - 1) // per_page
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("errors_*.png"):  # an earlier evaluation's pages
        old.unlink()
    written = []
    for page in tqdm(range(pages), desc=f"{name} errors", unit="page", disable=pages < 2):
        chunk = errors[page * per_page:(page + 1) * per_page]
        title = (f"{name}: {len(errors)} of {len(samples)} misread, most confident first "
                 f"(page {page + 1} of {pages})")
        lines = [(s.label, s.prediction or "(empty)", f"{s.confidence:.3f}  #{s.index}") for s in chunk]
        path = folder / f"errors_{page + 1:03d}.png"
        save_png(contact_sheet(title, [read_image(root, s.index) for s in chunk], lines), path)
        written.append(path)
    return written
