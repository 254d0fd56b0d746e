"""Where a recognizer looks, as tensors: the decoders' cross-attention over their memory for every decoded
character, per decoder and decoding pass, and Grad-CAM of the image tokens for each character's logit. Works for
every model family (`strhub.evaluation.figures.attention_figure` draws the result).

    explanations = explain(model, images)                 # one Explanation per image
    maps = explanations[0].passes[-1].attention           # (characters, heads, memory tokens), last layer

The maps are recorded from the model's own decoding (`strhub.models.recording`), so the text explained is the
text the model reads. Memory layouts: CLIP4STR's visual decoder and STR-Adapter read CLIP's image tokens (CLS,
then the patch grid), CLIP4STR's cross decoder reads [image tokens ; caption tokens], PARSeq reads its ViT's patch
grid alone.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from strhub.models.recognizer import Recognizer
from strhub.models.recording import AttentionRecorder, RecordedPass

CAPTION_DECODER = "cross"  # CLIP4STR's cross-modal decoder, whose memory ends with the caption's tokens


@dataclass(frozen=True)
class MemoryLayout:
    """What a decoder's memory holds: `prefix` tokens (CLS) before the patch grid `grid` (rows, columns, in
    row-major order), then caption tokens, `text` naming each (the text tower's token, CLIP's BPE by default; empty
    for padding)."""

    prefix: int
    grid: Tuple[int, int]
    text: Tuple[str, ...] = ()

    @property
    def num_image(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]

    def __len__(self) -> int:
        return self.num_image + len(self.text)

    def split(self, weights: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Weights over the memory (..., M) as (prefix (..., P), patch grid (..., rows, columns), text (..., T))."""
        if weights.shape[-1] != len(self):
            raise ValueError(f"weights over {weights.shape[-1]} memory tokens do not fit a layout of {len(self)} "
                             f"({self.prefix} prefix, {self.grid[0]}x{self.grid[1]} grid, {len(self.text)} text)")
        prefix, patches, text = weights.split([self.prefix, self.num_image - self.prefix, len(self.text)], dim=-1)
        return prefix, patches.unflatten(-1, self.grid), text


@dataclass
class PassMaps:
    """One decoding pass of one decoder on one image: its reading, the confidence of each decoded character then
    of EOS (all positions when it read no EOS), and per decoder layer the cross-attention of each of those
    positions (characters, heads, memory tokens)."""

    decoder: str
    name: str
    text: str
    confidences: Tensor
    layers: List[Tensor]
    layout: MemoryLayout

    @property
    def attention(self) -> Tensor:
        """The last layer's maps (characters, heads, memory tokens)."""
        return self.layers[-1]


@dataclass
class Explanation:
    """An image's reading (the model's output), its confidences (characters, then EOS), every pass of every
    decoder, and with Grad-CAM, per decoder, a map (characters, rows, columns) for each character of its final
    pass."""

    text: str
    confidences: Tensor
    passes: List[PassMaps]
    grad_cam: Dict[str, Tensor] = field(default_factory=dict)

    def final_passes(self) -> List[PassMaps]:
        """The last pass of each decoder."""
        last = {maps.decoder: maps for maps in self.passes}
        return list(last.values())


def caption_labels(model: Recognizer, visual_logits: Tensor) -> List[Tuple[str, ...]]:
    """CLIP4STR: per image, the tokens of the caption that the visual logits (N, L, C) make, as the cross decoder's
    memory holds them (CLIP's BPE: start, tokens, end, then empty strings for the padding; see the text tower's
    `token_labels`)."""
    return model.text_tower.token_labels(model.captions(visual_logits.max(-1).indices))


def layouts(model: Recognizer, recorded: RecordedPass, index: int,
            visual_passes: Sequence[RecordedPass]) -> List[MemoryLayout]:
    """The memory layout of the `index`-th pass of a decoder, per image. CLIP4STR's cross-modal pass K reads the
    caption of visual pass K."""
    prefix, grid = model.token_grid
    num_images = len(recorded.logit_chunks[0])
    if recorded.decoder != CAPTION_DECODER:
        return [MemoryLayout(prefix, grid)] * num_images
    num_text = recorded.chunks[-1][0].shape[-1] - prefix - grid[0] * grid[1]
    if num_text != model.context_length:  # the caption's EOT feature alone (clip_cls_eot_feature)
        return [MemoryLayout(prefix, grid, ("<end>",) * num_text)] * num_images
    return [MemoryLayout(prefix, grid, text) for text in caption_labels(model, visual_passes[index].logits)]


@torch.inference_mode()
def record(model: Recognizer, images: Tensor) -> Tuple[Tensor, AttentionRecorder]:
    """The model's logits for `images` (N, 3, H, W) and the recorder of its passes."""
    with AttentionRecorder(model.named_decoders()) as recorder:
        logits = model(images)
    return logits, recorder


def grad_cam(model: Recognizer, images: Tensor) -> Dict[str, Tensor]:
    """Per decoder, Grad-CAM of the image tokens it reads for each position of its final pass (N, Q, rows,
    columns): the patch tokens weighted by the mean gradient of the position's top logit over the patches,
    summed over channels and clipped at zero. Decoding runs again with autograd, on the same path."""
    prefix, (rows, cols) = model.token_grid
    with torch.enable_grad(), AttentionRecorder(model.named_decoders(), leaf_memory=True) as recorder:
        model(images)
        maps = {}
        for name in model.named_decoders():
            logits = recorder.passes_of(name)[-1].logits
            memory = recorder.memories[name][0]  # the image tokens (CLIP4STR's cross decoder reads the text next)
            patches = memory[:, prefix:prefix + rows * cols].detach()
            top = logits.argmax(-1, keepdim=True)
            cams = []
            for position in range(logits.shape[1]):
                target = logits[:, position].gather(1, top[:, position]).sum()
                gradient, = torch.autograd.grad(target, memory, retain_graph=True)
                weights = gradient[:, prefix:prefix + rows * cols].mean(1, keepdim=True)
                cams.append((patches * weights).sum(-1).clamp(min=0).unflatten(-1, (rows, cols)))
            maps[name] = torch.stack(cams, dim=1)
    return maps


def explain(model: Recognizer, images: Tensor, with_grad_cam: bool = False) -> List[Explanation]:
    """An `Explanation` per image of the batch `images` (N, 3, H, W), transformed as the model reads them."""
    logits, recorder = record(model, images)
    texts, confidences = model.tokenizer.decode(logits.softmax(-1))
    explanations = [Explanation(text, prob, []) for text, prob in zip(texts, confidences)]
    visual = recorder.passes_of(next(iter(model.named_decoders())))
    for recorded in recorder.passes:
        index = recorder.passes_of(recorded.decoder).index(recorded)
        pass_texts, pass_confidences = model.tokenizer.decode(recorded.logits.softmax(-1))
        attention = recorded.attention
        for i, (explanation, layout) in enumerate(zip(explanations, layouts(model, recorded, index, visual))):
            length = len(pass_confidences[i])
            explanation.passes.append(PassMaps(recorded.decoder, recorded.name, pass_texts[i], pass_confidences[i],
                                               [layer[i, :length] for layer in attention], layout))
    if with_grad_cam:
        cams = grad_cam(model, images)
        for i, explanation in enumerate(explanations):
            lengths = {maps.decoder: len(maps.confidences) for maps in explanation.final_passes()}
            explanation.grad_cam = {name: cam[i, :lengths[name]] for name, cam in cams.items()}
    return explanations
