"""Reads the text in word images and prints one `file: text` line per image.

    python read.py CHECKPOINT --images_path misc/test_images
    python read.py CHECKPOINT photo1.png 'crops/*.jpg' --confidence --device cpu
    python read.py EXPORT_DIR misc/test_images --backend onnx       # an export of export.py, on ONNX Runtime

Folders are searched recursively for .png, .jpg and .jpeg files, printed relative to the folder, in name order;
files and glob matches are printed as given. The text is the model's raw prediction over its training charset
(case and punctuation kept), in any script, printed in UTF-8 (JSON too, unescaped); an empty prediction prints as
`file: (empty)` (`--json` keeps the raw, empty text). A file that cannot be read gets an error line on stderr (exit
status 1), and the others are still read. Extra arguments `name:type=value` override the model's hyper-parameters
(a name the model does not take is refused).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image
from tqdm import tqdm

from strhub.app.common import Parser, count, list_images, reported
from strhub.data.transforms import get_transform
from strhub.host import choose_precision, default_device, inference_precision, reuse_freed_memory
from strhub.models.checkpoint import load_model

EMPTY = "(empty)"  # how an empty prediction is printed


def read_batch(model: torch.nn.Module, transform: Callable, batch: List[Tuple[str, Path]], device: torch.device,
               precision: str) -> List[Dict[str, Any]]:
    """`{file, text, confidence}`, or `{file, error}` for a file that cannot be read, per image of the batch."""
    records, tensors = [], []
    for name, path in batch:
        records.append({"file": name})
        try:
            with Image.open(path) as image:
                tensors.append(transform(image))
        except Exception as err:  # any unreadable file is reported, and the rest are still read
            records[-1]["error"] = f"{type(err).__name__}: {err}"
    if tensors:
        with torch.inference_mode(), inference_precision(model, device, precision):
            logits = model(torch.stack(tensors).to(device))
        texts, confidences = model.tokenizer.read(logits.float().softmax(-1))
        readable = [record for record in records if "error" not in record]
        for record, text, confidence in zip(readable, texts, confidences):
            record.update(text=text, confidence=confidence)
    return records


def onnx_reader(parser: Parser, args: argparse.Namespace, kwargs: Dict[str, Any]) -> Any:
    """The `OnnxReader` of `--backend onnx`: its graphs are fixed, so model overrides and `--precision` are refused."""
    from strhub.deploy.runtime import OnnxReader

    if kwargs:
        parser.error(f"--backend onnx: an export is fixed, so {', '.join(kwargs)} cannot be overridden; export the "
                     f"checkpoint with them (python export.py CHECKPOINT --out DIR {' '.join(kwargs)}...)")
    if args.precision not in ("32", "auto"):
        parser.error("--backend onnx: --precision is the export's (python export.py ... --fp16 for float16, --int8 "
                     "for int8 encoders)")
    try:
        return OnnxReader(args.checkpoint, device=args.device)
    except (ImportError, ValueError) as err:
        parser.error(str(err))


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__)
    parser.add_checkpoint("; with --backend onnx, an export folder of export.py (or its model.json or one of its "
                          "graphs)")
    parser.add_argument("images", nargs="*", help="image files, folders or glob patterns")
    parser.add_argument("--images_path", action="append", default=[], help="a folder of images (repeatable)")
    parser.add_argument("--batch_size", type=count(1), default=1,
                        help="images per forward pass (default 1: larger batches are faster, but the early stop of "
                             "decoding is shared by a batch, so a few hard images may read differently)")
    parser.add_device()
    parser.add_argument("--confidence", action="store_true", help="append the prediction's confidence (0-1)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list of {file, text, confidence} (UTF-8 text, not escaped)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="run the checkpoint in PyTorch, or an ONNX export on ONNX Runtime (cpu, or cuda with "
                             "onnxruntime-gpu; the precision is the export's)")
    args, kwargs = parser.parse_with_model_args(sys.argv[1:] if argv is None else argv)
    inputs = args.images + args.images_path
    if not inputs:
        parser.error("give image files, folders or globs (or --images_path DIR)")
    sys.stdout.reconfigure(encoding="utf-8")  # text in any script, whatever the locale (JSON is UTF-8 by definition)
    reuse_freed_memory()
    with reported(parser.prog):
        device = default_device(args.device)
        if args.backend == "onnx":
            model, device = onnx_reader(parser, args, kwargs), torch.device("cpu")  # ONNX Runtime takes host arrays
        else:
            model = load_model(args.checkpoint, **kwargs).eval().to(device)
    precision = "32" if args.backend == "onnx" else choose_precision(args.precision, device)
    transform = model.transform if args.backend == "onnx" else get_transform(model.image_size)
    items = list(list_images(inputs))
    if not items:
        parser.error(f"no .png, .jpg or .jpeg image in {', '.join(inputs)}")
    records: List[Dict[str, Any]] = []
    progress = tqdm(total=len(items), unit="img", disable=not sys.stderr.isatty())
    for start in range(0, len(items), args.batch_size):
        batch = read_batch(model, transform, items[start:start + args.batch_size], device, precision)
        for record in batch:
            if "error" in record:
                tqdm.write(f"{record['file']}: error: {record['error']}", file=sys.stderr)
            elif not args.json:
                suffix = f" ({record['confidence']:.4f})" if args.confidence else ""
                tqdm.write(f"{record['file']}: {record['text'] or EMPTY}{suffix}", file=sys.stdout)
        records += batch
        progress.update(len(batch))
    progress.close()
    if args.json:
        print(json.dumps(records, indent=1, ensure_ascii=False))
    sys.exit(1 if any("error" in record for record in records) else 0)


if __name__ == "__main__":
    main()
