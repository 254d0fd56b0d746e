"""Exports a checkpoint of any model family as ONNX graphs, with the model.json that a runtime needs (charset,
image size, normalisation, maximum length, special tokens, graphs and their inputs and outputs), and checks the
export against PyTorch on random images before it says it is done. Defaults: configs/export.yaml.

    python export.py CHECKPOINT --out DIR [--opset N] [--fp16 | --int8 [--calibration DIR]] [name:type=value ...]
    python read.py DIR IMAGES... --backend onnx

CHECKPOINT is a file or a run folder (its best checkpoint); `name:type=value` arguments override the model's
hyper-parameters, as for read.py (e.g. refine_iters:int=2). --fp16 exports float16 weights and activations, checked
against the float16 PyTorch model. --int8 adds an int8 image encoder (ONNX Runtime's static quantization,
calibrated on the images of --calibration DIR or on words rendered with the model's charset) and, for CLIP4STR, an
int8 text encoder (dynamic quantization), which the reader then uses; it says how many calibration images it reads
as PyTorch does in float32. Needs the onnx extra:
pip install -e ".[onnx]".
"""
import io
import sys
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import OmegaConf
from PIL import Image

from strhub.app.common import Parser, list_images, reported
from strhub.config import CONFIG_DIR
from strhub.deploy.export import ExportError, check_opset, write_export
from strhub.deploy.quantize import folder_images, quantize_export, same_strings
from strhub.models.checkpoint import checkpoint_file, load_model


def main(argv: Optional[List[str]] = None) -> None:
    defaults = OmegaConf.load(CONFIG_DIR / "export.yaml")
    parser = Parser(__doc__)
    parser.add_checkpoint()
    parser.add_argument("--out", type=Path, required=True, help="folder to write the graphs and model.json into")
    parser.add_argument("--opset", type=int, default=defaults.opset, help=f"ONNX opset (default {defaults.opset})")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations")
    parser.add_argument("--int8", action="store_true",
                        help="int8 image and text encoders too (ONNX Runtime quantization), which the reader uses")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help=f"--int8: calibrate on the first {defaults.calibration_images} images of DIR "
                             f"(default: as many words rendered with the model's charset)")
    args, overrides = parser.parse_with_model_args(sys.argv[1:] if argv is None else argv)
    try:
        import onnx  # noqa: F401  (the exporter writes with it)
        import onnxruntime  # noqa: F401  (the check runs on it)
    except ImportError as err:
        parser.error(f"exporting needs the onnx extra ({err.name} is missing): pip install -e \".[onnx]\"")
    if args.int8 and args.fp16:
        parser.error("--int8 quantizes a float32 export's encoder: drop --fp16")
    if args.calibration and not args.int8:
        parser.error("--calibration sets the ranges of --int8: add --int8")
    calibration = calibration_paths(parser, args.calibration) if args.calibration else None
    with reported(parser.prog):
        check_opset(args.opset)
        checkpoint = checkpoint_file(args.checkpoint)
        model = load_model(checkpoint, **overrides).eval()
    if args.fp16:
        model = model.half()
    atol = defaults.fp16_atol if args.fp16 else defaults.atol
    try:
        manifest, results = write_export(model, args.out, args.opset, atol, defaults.check_batches, defaults.check_seed,
                                         exact=not args.fp16, source=checkpoint.name)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    for name, graph in manifest["graphs"].items():
        size = (args.out / graph["file"]).stat().st_size / 2**20
        print(f"{args.out / graph['file']}: {name}, {size:.1f} MiB")
    print(f"each graph matches PyTorch within {atol:g}; reading random images in batches of "
          f"{', '.join(str(r.batch) for r in results)}, ONNX Runtime and PyTorch ({manifest['dtype']}):")
    for result in results:
        print(f"  batch {result.batch}: logits within {result.max_difference:.2g}, "
              f"{result.same_strings} of {result.batch} strings the same")
    if args.fp16 and any(result.same_strings < result.batch for result in results):
        print("  (in float16 a near tie between two characters can go either way: compare on real images with "
              "read.py --backend onnx and --backend torch)")
    if args.int8:
        quantize(parser, model, args.out, calibration, defaults.calibration_images)
    print(f"done: {args.out} ({len(manifest['graphs'])} graphs and {args.out / 'model.json'}); read with "
          f"`python read.py {args.out} IMAGES... --backend onnx`")


def rendered_images(charset: str, count: int, seed: int = 0) -> List[Image.Image]:
    """`count` words rendered with the fonts of the system (`render_words`' defaults) over `charset`."""
    from strhub.tools.render_words import _WORDS, WordRenderer
    from strhub.tools.typefaces import find_fonts

    fonts = find_fonts()
    if not fonts:
        raise ValueError("no fonts to render calibration words with: give images with --calibration DIR")
    renderer = WordRenderer(charset, fonts, _WORDS, 32, 0, 1, 12, (20, 44), "png", seed)
    return [Image.open(io.BytesIO(renderer.render("test", index)[0])).convert("RGB") for index in range(count)]


def calibration_paths(parser: Parser, folder: Path) -> List[Path]:
    """The images of `--calibration DIR`, in name order (a folder without any ends the command with one line)."""
    if not folder.is_dir():
        parser.error(f"--calibration {folder}: no such folder")
    paths = [path for _, path in list_images([str(folder)])]
    if not paths:
        parser.error(f"--calibration {folder}: no .png, .jpg or .jpeg image in it")
    return paths


def quantize(parser: Parser, model: Any, out: Path, calibration: Optional[List[Path]], count: int) -> None:
    """Adds the int8 graphs to the export in `out` and says how many calibration images it reads as PyTorch does."""
    try:
        images = folder_images(calibration, count) if calibration else rendered_images(model.tokenizer.charset, count)
    except ValueError as err:
        parser.error(str(err))
    source = str(calibration[0].parent) if calibration else f"{len(images)} rendered words"
    manifest = quantize_export(out, images, source)
    for graph, method in manifest["quantized"]["graphs"].items():
        file = out / manifest["graphs"][graph]["file"]
        print(f"{file}: {graph}, int8 ({method}), {file.stat().st_size / 2**20:.1f} MiB")
    same = same_strings(model, out, images)
    print(f"int8 calibrated on {source}: it reads {same} of {len(images)} of them as PyTorch does in float32")


if __name__ == "__main__":
    main()
