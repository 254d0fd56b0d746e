#!/usr/bin/env python3
"""Exports a checkpoint of any model family as ONNX graphs, with the model.json that a runtime needs (charset,
image size, normalisation, maximum length, special tokens, graphs and their inputs and outputs), and checks the
export against PyTorch on random images before it says it is done. Defaults: configs/export.yaml.

    python export.py CHECKPOINT --out DIR [--opset N] [--fp16] [name:type=value ...]
    python read.py DIR IMAGES... --backend onnx

CHECKPOINT is a file or a run folder (its best checkpoint); `name:type=value` arguments override the model's
hyper-parameters, as for read.py (e.g. refine_iters:int=2). --fp16 exports float16 weights and activations, checked
against the float16 PyTorch model. Needs the onnx extra: pip install -e ".[onnx]".
"""
import argparse
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from strhub.cli import parse_model_args
from strhub.configs import CONFIG_DIR
from strhub.deploy.export import ExportError, check_export, check_opset, export_onnx
from strhub.models.checkpoint import InvalidCheckpointError, checkpoint_file, load_model

MODEL_ARG = re.compile(r"^\w+:\w+=")


def main() -> None:
    defaults = OmegaConf.load(CONFIG_DIR / "export.yaml")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint file, a run folder (its best checkpoint) or a released checkpoint's name")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the graphs and model.json into")
    parser.add_argument("--opset", type=int, default=defaults.opset, help=f"ONNX opset (default {defaults.opset})")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations")
    argv = sys.argv[1:]
    args = parser.parse_args([a for a in argv if not MODEL_ARG.match(a)])
    try:
        import onnx  # noqa: F401  (the exporter writes with it)
        import onnxruntime  # noqa: F401  (the check runs on it)
    except ImportError as err:
        parser.error(f"exporting needs the onnx extra ({err.name} is missing): pip install -e \".[onnx]\"")
    try:
        check_opset(args.opset)
    except ExportError as err:
        parser.error(str(err))
    try:
        overrides = parse_model_args([a for a in argv if MODEL_ARG.match(a)])
        checkpoint = checkpoint_file(args.checkpoint)
        model = load_model(checkpoint, **overrides).eval()
    except (ValueError, FileNotFoundError, InvalidCheckpointError) as err:
        parser.error(str(err))
    if args.fp16:
        model = model.half()
    atol = defaults.fp16_atol if args.fp16 else defaults.atol
    try:
        manifest = export_onnx(model, args.out, args.opset, atol, source=checkpoint.name)
        results = check_export(model, args.out, defaults.check_batches, defaults.check_seed, atol, exact=not args.fp16)
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
    print(f"done: {args.out} ({len(manifest['graphs'])} graphs and {args.out / 'model.json'}); read with "
          f"`python read.py {args.out} IMAGES... --backend onnx`")

if __name__ == "__main__":
    main()
