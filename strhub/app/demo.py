"""strhub-demo: a web page that reads word images with one or more checkpoints (Gradio; `pip install -e ".[demo]"`).

    strhub-demo clip4str_base_6e9fe947ac parseq            # released names (downloaded once), files or run folders
    strhub-demo outputs/tiny/run --random tiny --port 7861  # --random EXPERIMENT: its config with random weights

Drop or paste word images (or pick an example from misc/test_images), and the page shows the text of each as
read.py prints it, its confidence and each character's, the attention map of each character per decoder
(strhub.evaluation.explain), and a CSV of the results to download; a menu switches between the checkpoints. Images
are read one at a time, as read.py reads them by default. It serves on 127.0.0.1 unless told otherwise (--host).
"""
import csv
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import nn

from strhub.app.common import Parser, reported, user_errors
from strhub.data.transforms import get_transform
from strhub.evaluation.explain import explain
from strhub.evaluation.figures import attention_figure, input_pixels, save_png
from strhub.host import default_device
from strhub.models.checkpoint import checkpoint_file, load_model
from strhub.models.registry import build_random
from strhub.models.safe_load import safe_load

EXAMPLES = Path(__file__).resolve().parents[2] / "misc" / "test_images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EMPTY = "(empty)"  # how read.py prints an empty reading
COLUMNS = ["file", "text", "confidence", "characters"]
CSS = "#examples img { max-height: 48px; object-fit: contain; }"  # word crops, some of them tall


@dataclass
class Loaded:
    """A model ready to read, and what the page says about it."""

    name: str
    model: nn.Module
    device: torch.device
    note: str

    def describe(self) -> str:
        height, width = self.model.image_size
        parameters = sum(p.numel() for p in self.model.parameters()) / 1e6
        return (f"**{self.name}**: {type(self.model).__name__}, {height}x{width} images, {parameters:.1f} M "
                f"parameters, on {self.device}. {self.note}")


def random_clip_note(path: Path) -> str:
    """What the page says about a checkpoint whose CLIP was trained from random weights (its hyper-parameters say
    `clip_pretrained: null`), else nothing."""
    checkpoint = safe_load(path, mmap=True)
    hparams = checkpoint.get("hyper_parameters") or {} if isinstance(checkpoint, dict) else {}
    if "clip_pretrained" in hparams and not hparams["clip_pretrained"]:
        return ("⚠️ Its CLIP started from random weights (`clip_pretrained: null`, a small config): it reads only "
                "what it was trained on, so expect wrong text on real photos.")
    return ""


def load_checkpoint(name: str, device: torch.device) -> Loaded:
    """A checkpoint file, run folder or released name (see `checkpoint_file`), loaded for reading."""
    path = checkpoint_file(name)
    return Loaded(name, load_model(path).eval().to(device), device, random_clip_note(path))


def load_random(experiment: str, device: torch.device) -> Loaded:
    """An experiment config's model with random weights (no CLIP file is read)."""
    model = build_random(experiment).eval().to(device)
    return Loaded(f"{experiment} (random weights)", model, device,
                  "⚠️ Random weights, CLIP included (no checkpoint): the text is noise; this shows the machinery.")


def read_image(loaded: Loaded, path: Path, figure_path: Path) -> Dict[str, Any]:
    """One image's reading as read.py gives it (text, confidence), each character's confidence, and its
    attention figure written to `figure_path`."""
    with Image.open(path) as image:
        tensor = get_transform(loaded.model.image_size)(image).unsqueeze(0).to(loaded.device)
    with torch.inference_mode():
        logits = loaded.model(tensor)
    texts, probs = loaded.model.tokenizer.decode(logits.float().softmax(-1))
    text, probs = texts[0], probs[0].tolist()
    characters = " ".join(f"{char}:{prob:.3f}" for char, prob in zip(text, probs))
    explanation = explain(loaded.model, tensor)[0]
    save_png(attention_figure(input_pixels(tensor[0]), explanation), figure_path)
    return {"file": path.name, "text": text, "confidence": float(torch.tensor(probs).prod()),
            "characters": characters}


def read_all(loaded: Loaded, paths: Sequence[Path], out: Path) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]],
                                                                      str, Path]:
    """Every image's record, its figure (path, caption), the lines read.py would print, and the CSV of the records;
    an image that cannot be read gets an error line instead."""
    records, figures, lines = [], [], []
    for index, path in enumerate(paths):
        try:
            record = read_image(loaded, path, out / f"{index:03d}_{path.stem}.png")
        except (OSError, ValueError) as err:  # not an image PIL reads
            lines.append(f"{path.name}: error: {type(err).__name__}: {err}")
            continue
        records.append(record)
        figures.append((str(out / f"{index:03d}_{path.stem}.png"), f"{path.name}: {record['text'] or EMPTY}"))
        lines.append(f"{path.name}: {record['text'] or EMPTY}")
    table = out / "results.csv"
    with open(table, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    return records, figures, "\n".join(lines), table


def build_page(loaders: Dict[str, Callable[[], Loaded]], first: Loaded, examples: List[str]) -> Any:
    """The Gradio page over the models of `loaders` (each loaded when first chosen; `first` is loaded already)."""
    import gradio as gr

    loaded: Dict[str, Loaded] = {first.name: first}

    def model(name: str) -> Loaded:
        if name not in loaded:
            try:
                loaded[name] = loaders[name]()
            except user_errors() as err:
                raise gr.Error(str(err)) from None
        return loaded[name]

    def run(name: str, files: Optional[List[str]], pasted: Optional[str]):
        paths = [Path(f) for f in files or []] + ([Path(pasted)] if pasted else [])
        if not paths:
            raise gr.Error("Drop or paste a word image first (or pick an example).")
        out = Path(tempfile.mkdtemp(prefix="strhub-demo-"))
        records, figures, lines, table = read_all(model(name), paths, out)
        rows = [[f"{value:.4f}" if column == "confidence" else value for column, value in record.items()]
                for record in records]
        return lines, rows, figures, str(table)

    with gr.Blocks(title="strhub demo: scene text recognition") as page:
        gr.Markdown("# Read the text in word images\nCLIP4STR, STR-Adapter and PARSeq checkpoints (strhub). Drop or "
                    "paste cropped word images, or pick an example below, then press **Read**.")
        with gr.Row():
            choice = gr.Dropdown(list(loaders), value=first.name, label="Checkpoint", elem_id="checkpoint")
            about = gr.Markdown(first.describe(), elem_id="about")
        with gr.Row():
            files = gr.File(file_count="multiple", file_types=["image"], label="Word images (drop one or many)",
                            elem_id="files")
            pasted = gr.Image(type="filepath", sources=["upload", "clipboard"], label="…or paste one", height=160,
                              elem_id="pasted")
        with gr.Column(elem_id="examples"):
            gr.Examples(examples, inputs=[pasted], label="Examples (misc/test_images)", examples_per_page=12)
        button = gr.Button("Read", variant="primary", elem_id="read")
        texts = gr.Textbox(label="Text, as read.py prints it", lines=4, elem_id="texts", interactive=False)
        table = gr.Dataframe(headers=COLUMNS, label="Confidence of each reading and of each character",
                             elem_id="table", interactive=False, wrap=True)
        figures = gr.Gallery(label="Attention of each character per decoder (strhub.evaluation.explain)", columns=2,
                             height="auto", object_fit="contain", elem_id="figures")
        csv_file = gr.File(label="Results as CSV", elem_id="csv")
        choice.change(lambda name: model(name).describe(), choice, about)
        button.click(run, [choice, files, pasted], [texts, table, figures, csv_file])
    return page


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__, prog="strhub-demo")
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                        help="checkpoint files, run folders (their best checkpoint) or released checkpoints' names")
    parser.add_argument("--random", action="append", default=[], metavar="EXPERIMENT",
                        help="also an experiment config with random weights (e.g. tiny; repeatable)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default %(default)s)")
    parser.add_device(precision=False)
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.random:
        parser.error("give a checkpoint, run folder or released name (or --random tiny: a model with random weights)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing is sent anywhere
    try:
        import gradio  # noqa: F401 - checked before models are loaded
    except ImportError:
        parser.error('the demo needs the demo extra (gradio is missing): pip install -e ".[demo]"')
    with reported(parser.prog):
        device = default_device(args.device)
        loaders: Dict[str, Callable[[], Loaded]] = {name: (lambda n=name: load_checkpoint(n, device))
                                                    for name in args.checkpoints}
        loaders.update({f"{name} (random weights)": (lambda n=name: load_random(n, device)) for name in args.random})
        start = time.perf_counter()
        first = next(iter(loaders.values()))()
    print(f"loaded {first.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    examples = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if EXAMPLES.is_dir() else []
    page = build_page(loaders, first, examples)
    print(f"serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    page.launch(server_name=args.host, server_port=args.port, ssr_mode=False, quiet=True,
                allowed_paths=[str(EXAMPLES)], footer_links=[], css=CSS)


if __name__ == "__main__":
    main()
