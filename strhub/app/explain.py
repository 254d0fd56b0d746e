"""Draws what a recognizer looks at: one PNG per image with the model's input, its reading with the confidence of
each character, and for each decoded character (then EOS) the decoders' cross-attention over the image, heads
averaged, at the patch grid (the CLS token's share written above each map). For CLIP4STR, also the cross-modal
decoder's attention over the caption's tokens, a bar per token (CLIP's BPE tokens, or those of a Hugging Face text
tower's tokenizer).

    python explain.py CHECKPOINT misc/test_images --out explained
    python explain.py CHECKPOINT photo.png 'crops/*.jpg' --out explained --method gradcam --all_passes

Images are found as read.py finds them; each PNG is named after its image below --out (an image in a folder by
its path there). By default each decoder's last pass is drawn; --all_passes draws every pass (the greedy or
parallel one, then each refinement). --method gradcam adds Grad-CAM of the image tokens for each character's logit.
Extra arguments `name:type=value` override the model's hyper-parameters.
"""
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image
from tqdm import tqdm

from strhub.app.common import Parser, count, list_images, reported
from strhub.data.transforms import get_transform
from strhub.evaluation.explain import explain
from strhub.evaluation.figures import attention_figure, input_pixels, save_png
from strhub.host import choose_precision, default_device, inference_precision, reuse_freed_memory
from strhub.models.checkpoint import load_model


def output_path(out: Path, name: str, path: Path, taken: Dict[Path, str]) -> Path:
    """`out/<name>.png` for an image found in a folder (`name`: its path there), `out/<file name>.png` for one
    given as a file or glob; a name already taken keeps the image's suffix too (`a_jpg.png`)."""
    relative = Path(path.name) if Path(name) == path else Path(name)
    target = out / relative.with_suffix(".png")
    if target in taken:
        target = out / relative.with_name(relative.name.replace(".", "_") + ".png")
    taken[target] = name
    return target


def load_images(batch: List[Tuple[str, Path]],
                transform: Callable) -> Tuple[List[Tuple[str, Path, torch.Tensor]], List[str]]:
    """(name, path, tensor) of the images that load, and an error line for each that does not."""
    loaded, errors = [], []
    for name, path in batch:
        try:
            with Image.open(path) as image:
                loaded.append((name, path, transform(image)))
        except Exception as err:  # any unreadable file is reported, and the rest are still drawn
            errors.append(f"{name}: error: {type(err).__name__}: {err}")
    return loaded, errors


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__)
    parser.add_checkpoint()
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--method", choices=("attention", "gradcam"), default="attention",
                        help="attention maps only, or Grad-CAM too")
    parser.add_argument("--all_passes", action="store_true", help="draw every decoding pass, not just the last ones")
    parser.add_argument("--batch_size", type=count(1), default=1, help="images per forward pass")
    parser.add_device()
    args, kwargs = parser.parse_with_model_args(sys.argv[1:] if argv is None else argv)
    reuse_freed_memory()
    with reported(parser.prog):
        device = default_device(args.device)
        model = load_model(args.checkpoint, **kwargs).eval().to(device)
    precision = choose_precision(args.precision, device)
    items = list(list_images(args.images))
    if not items:
        parser.error(f"no .png, .jpg or .jpeg image in {', '.join(args.images)}")
    transform = get_transform(model.image_size)
    taken: Dict[Path, str] = {}
    failed = False
    start_time = time.perf_counter()
    progress = tqdm(total=len(items), unit="img", disable=not sys.stderr.isatty())
    for start in range(0, len(items), args.batch_size):
        batch = items[start:start + args.batch_size]
        loaded, errors = load_images(batch, transform)
        for error in errors:
            tqdm.write(error, file=sys.stderr)
        failed |= bool(errors)
        if loaded:
            images = torch.stack([tensor for _, _, tensor in loaded]).to(device)
            with inference_precision(model, device, precision):
                explanations = explain(model, images, with_grad_cam=args.method == "gradcam")
            for (name, source, tensor), explanation in zip(loaded, explanations):
                path = output_path(args.out, name, source, taken)
                path.parent.mkdir(parents=True, exist_ok=True)
                passes = explanation.passes if args.all_passes else None
                save_png(attention_figure(input_pixels(tensor), explanation, passes), path)
                tqdm.write(f"{name}: {explanation.text} -> {path}", file=sys.stdout)
        progress.update(len(batch))
    progress.close()
    if taken:
        seconds = time.perf_counter() - start_time
        print(f"{len(taken)} figures in {args.out} ({seconds:.1f} s, {seconds / len(taken):.2f} s per image)",
              file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
