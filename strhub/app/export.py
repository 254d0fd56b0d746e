"""Exports a checkpoint of any model family as ONNX graphs, with the model.json that a runtime needs (charset,
image size, normalisation, maximum length, special tokens, graphs and their inputs and outputs), and checks the
export against PyTorch on random images before it says it is done. Defaults: configs/export.yaml.

    python export.py CHECKPOINT --out DIR [--opset N] [--fp16] [name:type=value ...]
    python read.py DIR IMAGES... --backend onnx

CHECKPOINT is a file or a run folder (its best checkpoint); `name:type=value` arguments override the model's
hyper-parameters, as for read.py (e.g. refine_iters:int=2). --fp16 exports float16 weights and activations, checked
against the float16 PyTorch model. Needs the onnx extra: pip install -e ".[onnx]".
"""
import sys
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from strhub.app.common import Parser, reported
from strhub.config import CONFIG_DIR
from strhub.deploy.export import ExportError, check_opset, write_export
from strhub.models.checkpoint import checkpoint_file, load_model


def main(argv: Optional[List[str]] = None) -> None:
    defaults = OmegaConf.load(CONFIG_DIR / "export.yaml")
    parser = Parser(__doc__)
    parser.add_checkpoint()
    parser.add_argument("--out", type=Path, required=True, help="folder to write the graphs and model.json into")
    parser.add_argument("--opset", type=int, default=defaults.opset, help=f"ONNX opset (default {defaults.opset})")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations")
    args, overrides = parser.parse_with_model_args(sys.argv[1:] if argv is None else argv)
    try:
        import onnx  # noqa: F401  (the exporter writes with it)
        import onnxruntime  # noqa: F401  (the check runs on it)
    except ImportError as err:
        parser.error(f"exporting needs the onnx extra ({err.name} is missing): pip install -e \".[onnx]\"")
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
    print(f"done: {args.out} ({len(manifest['graphs'])} graphs and {args.out / 'model.json'}); read with "
          f"`python read.py {args.out} IMAGES... --backend onnx`")


if __name__ == "__main__":
    main()
