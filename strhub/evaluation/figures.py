"""The figures: the attention maps of one image, contact sheets of misread images, and training curves. Drawn with
matplotlib's object API on its Agg canvas (no pyplot, no display), a few hundred pixels a side, with text of 8
points or more. The picture-like figures are composed in pixels (`Canvas`) and drawn as one image with text and
bars on top, which takes a fraction of a second where a grid of axes would take seconds."""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import Tensor

from strhub.evaluation.explain import Explanation, PassMaps

DPI = 100
FONT = 9  # points
HEAT = "inferno"
HEAT_ALPHA = 0.75  # the opacity of a map's maximum
DECODER_TITLES = {"visual": "visual decoder", "cross": "cross-modal decoder", "decoder": "decoder"}

PANEL_WIDTH = 180  # pixels of one character's map
PANEL_MAX_HEIGHT = 120
COLUMNS = 4  # character panels per row
GAP = 10
TITLE = 26  # a section's title line
LINE = 15  # a line of text under or over a panel
BARS = 48  # the bars of the caption tokens
BAR_LABELS = 46  # their labels, written upwards
HEADER_IMAGE = (100, 2 * PANEL_WIDTH + GAP)  # the input's box (height, width) in the header
HEADER_TEXT = 44  # the reading and the caption of the confidence bars
PALETTE = 256  # colours of a saved PNG


def save_png(figure: Figure, path: Path) -> None:
    """Renders `figure` with Agg and writes it as a PNG of PALETTE colours (a third of the size of full colour,
    with no visible difference on these figures)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    image.quantize(PALETTE, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


class Canvas:
    """A picture composed in pixels: images pasted into an RGB array, text and rectangles placed over it in pixel
    coordinates (y down), drawn by `figure()` as one matplotlib figure of the same size."""

    def __init__(self, height: int, width: int) -> None:
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)
        self.texts: List[Tuple[float, float, str, dict]] = []
        self.rectangles: List[Tuple[float, float, float, float, str]] = []

    def paste(self, top: int, left: int, pixels: np.ndarray) -> None:
        self.pixels[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels

    def text(self, x: float, y: float, text: str, **style) -> None:
        self.texts.append((x, y, text, {"fontsize": FONT, "va": "top", **style}))

    def rectangle(self, left: float, top: float, width: float, height: float, color: str) -> None:
        self.rectangles.append((left, top, width, height, color))

    def figure(self) -> Figure:
        height, width = self.pixels.shape[:2]
        figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
        ax = figure.add_axes((0, 0, 1, 1))
        ax.imshow(self.pixels, interpolation="nearest")
        for x, y, text, style in self.texts:
            ax.text(x, y, text, **style)
        for left, top, w, h, color in self.rectangles:
            ax.add_patch(Rectangle((left, top), w, h, color=color, linewidth=0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        return figure


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _character(text: str, position: int) -> str:
    return text[position] if position < len(text) else "[E]"


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def heat_overlay(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """`heat` (rows, columns), scaled to its maximum, laid over the grey image (H, W) uint8 one block of colour per
    patch, the more opaque the higher: (H, W, 3) uint8."""
    height, width = gray.shape
    if heat.size == 0:  # a memory without patch tokens (clip_cls_eot_feature)
        return np.repeat(gray[..., None], 3, axis=-1)
    scaled = heat / max(float(heat.max()), 1e-12)
    rgba = matplotlib.colormaps[HEAT](scaled)
    rgba[..., 3] = HEAT_ALPHA * (0.25 + 0.75 * scaled)
    blocks = rgba[np.arange(height) * heat.shape[0] // height][:, np.arange(width) * heat.shape[1] // width]
    alpha = blocks[..., 3:]
    mixed = (1 - alpha) * gray[..., None] / 255.0 + alpha * blocks[..., :3]
    return (mixed * 255).round().astype(np.uint8)


def _fit_size(size: Tuple[int, int], box: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) of `size` scaled to fit `box`, aspect kept."""
    scale = min(box[0] / size[0], box[1] / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class _AttentionLayout:
    """Pixel sizes of an attention figure for inputs of `image_size` (height, width)."""

    def __init__(self, image_size: Tuple[int, int]) -> None:
        self.panel = _fit_size(image_size, (PANEL_MAX_HEIGHT, PANEL_WIDTH))
        self.width = COLUMNS * (PANEL_WIDTH + GAP) + GAP
        self.header_image = _fit_size(image_size, HEADER_IMAGE)
        self.bar_height = max(20, self.header_image[0] - HEADER_TEXT - LINE)
        self.header_height = GAP + max(self.header_image[0], HEADER_TEXT + self.bar_height + LINE) + GAP + LINE

    def cell_height(self, with_text: bool) -> int:
        return LINE + self.panel[0] + LINE + (BARS + BAR_LABELS if with_text else 0) + GAP

    def section_height(self, count: int, with_text: bool) -> int:
        return TITLE + math.ceil(count / COLUMNS) * self.cell_height(with_text)

    def cell_origin(self, top: int, position: int, with_text: bool) -> Tuple[int, int]:
        row, column = divmod(position, COLUMNS)
        return top + TITLE + row * self.cell_height(with_text), GAP + column * (PANEL_WIDTH + GAP)


def _header(canvas: Canvas, layout: _AttentionLayout, image: np.ndarray, explanation: Explanation) -> None:
    """The model's input and its reading, with a bar of confidence per character (and EOS)."""
    canvas.paste(GAP, GAP, _resize(image, *layout.header_image))
    confidences = _array(explanation.confidences)
    left = GAP + layout.header_image[1] + 2 * GAP
    canvas.text(left, GAP, f"read: {explanation.text!r}", fontsize=FONT + 3)
    canvas.text(left, GAP + 22, f"confidence {float(np.prod(confidences)):.3f}; per character:", color="0.3")
    bar_top, bar_height = GAP + HEADER_TEXT, layout.bar_height
    step = min(24, (layout.width - left - GAP) / max(1, len(confidences)))
    for i, confidence in enumerate(confidences):
        x = left + i * step
        canvas.rectangle(x, bar_top, step - 3, bar_height, "0.9")
        canvas.rectangle(x, bar_top + bar_height * (1 - confidence), step - 3, bar_height * confidence, "tab:green")
        canvas.text(x + (step - 3) / 2, bar_top + bar_height + 1, _character(explanation.text, i), ha="center")
    canvas.text(GAP, layout.header_height - LINE - 4, "Maps: each character's cross-attention, heads averaged, "
                "scaled to its maximum. Above: confidence, CLS and caption shares.", fontsize=FONT - 1, color="0.3")


def _maps_section(canvas: Canvas, layout: _AttentionLayout, top: int, gray: np.ndarray, title: str, text: str,
                  heats: np.ndarray, captions: Sequence[str] = (), labels: Sequence[str] = (),
                  text_weights: Optional[np.ndarray] = None) -> int:
    """A row-wrapped grid of maps, one per character; with `text_weights` (characters, T), a bar per caption token
    under each map. Returns the section's height."""
    with_text = text_weights is not None
    canvas.text(GAP, top + 6, title, fontsize=FONT + 2, weight="bold")
    if with_text:
        shown = [i for i, token in enumerate(captions) if token]
        padding = len(captions) - len(shown)
        names = [captions[i] for i in shown] + ([f"pad/{padding}"] if padding else [])
        bars = np.concatenate([text_weights[:, shown], np.delete(text_weights, shown, axis=1).mean(1, keepdims=True)],
                              axis=1)[:, :len(names)]
        scale = max(float(bars.max()), 1e-12)
    for position, heat in enumerate(heats):
        y, x = layout.cell_origin(top, position, with_text)
        canvas.text(x, y, f"{_character(text, position)}" + (f"  {labels[position]}" if labels else ""))
        canvas.paste(y + LINE, x, heat_overlay(gray, heat))
        if with_text:
            bar_top = y + LINE + layout.panel[0] + LINE
            width = layout.panel[1] / len(names)
            for k, (name, value) in enumerate(zip(names, bars[position])):
                canvas.rectangle(x + k * width, bar_top + BARS * (1 - value / scale), width - 2, BARS * value / scale,
                                 "tab:blue")
                if position % COLUMNS == 0:  # the caption is the same for every character: labelled once a row
                    canvas.text(x + (k + 0.5) * width, bar_top + BARS + 2, name, rotation=90, ha="center",
                                fontsize=FONT - 1)
    if with_text:
        canvas.text(layout.width - GAP, top + 8, f"caption bars: full height {scale:.3f}; pad/N: the mean of N",
                    ha="right", color="0.3", fontsize=FONT - 1)
    return layout.section_height(len(heats), with_text)


def _pass_section(canvas: Canvas, layout: _AttentionLayout, top: int, gray: np.ndarray, maps: PassMaps) -> int:
    prefix, grid, text = (_array(part) for part in maps.layout.split(maps.attention.float().mean(1)))
    confidences = _array(maps.confidences)
    labels = []
    for position, confidence in enumerate(confidences):
        shares = [f"{confidence:.2f}"]
        if maps.layout.prefix:
            shares.append(f"CLS {prefix[position].sum():.2f}")
        if maps.layout.text:
            shares.append(f"text {text[position].sum():.2f}")
        labels.append(", ".join(shares))
    title = f"{DECODER_TITLES.get(maps.decoder, maps.decoder)}, {maps.name}: {maps.text!r}"
    return _maps_section(canvas, layout, top, gray, title, maps.text, grid, maps.layout.text, labels,
                         text if maps.layout.text else None)


def input_pixels(tensor: Tensor) -> np.ndarray:
    """The model's input (3, H, W), normalised with mean = std = 0.5, as (H, W, 3) uint8."""
    return (tensor.float().cpu() * 0.5 + 0.5).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def attention_figure(image: np.ndarray, explanation: Explanation,
                     passes: Optional[Sequence[PassMaps]] = None) -> Figure:
    """An image's figure: the input (H, W, 3) uint8 as the model reads it, its reading with per-character
    confidences, then for each of `passes` (default: each decoder's last pass) a map per character of its
    cross-attention over the patch grid, heads averaged and scaled to its maximum, labelled with the character's
    confidence and the shares of the CLS token and of the caption (whose tokens get a bar each), and the Grad-CAM
    maps, if any."""
    passes = explanation.final_passes() if passes is None else passes
    layout = _AttentionLayout(image.shape[:2])
    gray = _resize(np.asarray(Image.fromarray(image).convert("L")), *layout.panel)
    heights = [layout.section_height(len(maps.confidences), bool(maps.layout.text)) for maps in passes]
    heights += [layout.section_height(len(cams), False) for cams in explanation.grad_cam.values()]
    canvas = Canvas(layout.header_height + sum(heights) + GAP, layout.width)
    _header(canvas, layout, image, explanation)
    top = layout.header_height
    for maps in passes:
        top += _pass_section(canvas, layout, top, gray, maps)
    final = {maps.decoder: maps for maps in explanation.final_passes()}
    for decoder, cams in explanation.grad_cam.items():
        title = f"Grad-CAM of the image tokens, {DECODER_TITLES.get(decoder, decoder)}: {final[decoder].text!r}"
        top += _maps_section(canvas, layout, top, gray, title, final[decoder].text, _array(cams))
    return canvas.figure()


CELL_IMAGE = (64, 200)  # (height, width) in pixels of an image's box on a contact sheet
CELL_TEXT = 48  # pixels of text below it: ground truth, prediction, confidence
CELL_MARGIN = 12
SHEET_COLUMNS = 4
SHEET_ROWS = 8
SHEET_TITLE = 36


def _fit(image: Image.Image, box: Tuple[int, int]) -> np.ndarray:
    """`image` as RGB, scaled to fit `box` (height, width), aspect kept."""
    height, width = _fit_size((image.height, image.width), box)
    return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))


def contact_sheet(title: str, images: Sequence[Image.Image], lines: Sequence[Tuple[str, str, str]]) -> Figure:
    """A page of images (at most SHEET_COLUMNS x SHEET_ROWS), each over its three lines of text (ground truth,
    prediction in red, confidence)."""
    rows = max(1, math.ceil(len(images) / SHEET_COLUMNS))
    cell_h, cell_w = CELL_IMAGE[0] + CELL_TEXT + CELL_MARGIN, CELL_IMAGE[1] + CELL_MARGIN
    width = SHEET_COLUMNS * cell_w
    canvas = Canvas(SHEET_TITLE + rows * cell_h, width)
    canvas.text(width / 2, SHEET_TITLE / 2, title, fontsize=FONT + 3, ha="center", va="center")
    for k, (image, (truth, prediction, confidence)) in enumerate(zip(images, lines)):
        top = SHEET_TITLE + (k // SHEET_COLUMNS) * cell_h
        left = (k % SHEET_COLUMNS) * cell_w + CELL_MARGIN // 2
        pixels = _fit(image, CELL_IMAGE)
        canvas.paste(top + (CELL_IMAGE[0] - pixels.shape[0]) // 2, left + (CELL_IMAGE[1] - pixels.shape[1]) // 2,
                     pixels)
        text_top = top + CELL_IMAGE[0] + 2
        canvas.text(left, text_top, f"gt:   {truth}", family="monospace")
        canvas.text(left, text_top + LINE, f"pred: {prediction}", family="monospace", color="tab:red")
        canvas.text(left, text_top + 2 * LINE, f"conf: {confidence}", family="monospace", color="0.35")
    return canvas.figure()


def curves_figure(title: str, columns: Dict[str, List[Tuple[int, float]]], starts: Sequence[int]) -> Figure:
    """Training curves against the step: the losses, the learning rates (log scale) and the validation accuracy
    and 1 - NED, from `columns` (metric name → (step, value) points); dashed lines mark where a resumed run
    started again (`starts`)."""
    panels = [
        ("loss", [name for name in ("loss", "val_loss") if name in columns], "linear"),
        ("learning rate", sorted(name for name in columns if name.startswith("lr-")), "log"),
        ("validation (%)", [name for name in ("val_accuracy", "val_NED") if name in columns], "linear"),
    ]
    labels = {"loss": "training loss", "val_loss": "validation loss", "val_accuracy": "accuracy",
              "val_NED": "1 - NED"}
    figure = Figure(figsize=(6.4, 7.2), dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize=FONT + 2)
    axes = figure.subplots(len(panels), 1, sharex=True)
    for ax, (ylabel, names, scale) in zip(axes, panels):
        for name in names:
            steps, values = zip(*columns[name])
            marker = "o" if name.startswith("val") else None
            ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=labels.get(name, name[3:]))
        for start in starts:
            ax.axvline(start, color="0.5", linestyle="--", linewidth=0.8)
        if names:
            ax.set_yscale(scale)
            ax.legend(fontsize=FONT - 1, loc="best")
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", fontsize=FONT)
        ax.set_ylabel(ylabel, fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step", fontsize=FONT)
    return figure
