"""The CLIP backbone of CLIP4STR and STR-Adapter, built with open_clip.

CLIP4STR modifies CLIP in ways its released checkpoints depend on, so the backbone is built as the
original built it, whatever the weights' source: QuickGELU in both towers, heads = width // 64
(20 vision heads for ViT-H/14), pretrained weights rounded through float16, image features for
all tokens after `ln_post` and the projection, and text features for all positions of a short
causal context.
"""
import inspect
import math
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.factory import get_model_config
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from strhub.models.recompute import maybe_checkpoint
from strhub.models.safe_load import safe_load
from strhub.models.state_dicts import count_blocks, sub_state_dict

HEAD_WIDTH = 64
QUICK_GELU_BAND_ROWS = 128  # 128 rows of a 3072-wide activation take 1.5 MiB: they stay in L2
ClipArch = Dict[str, Any]


def is_hf_arch(arch: Union[str, ClipArch, None]) -> bool:
    """Whether an architecture (an open_clip name, or a dict: see `arch_from_name`) has a Hugging Face text tower."""
    if isinstance(arch, str):
        return "hf_model_name" in (get_model_config(arch) or {}).get("text_cfg", {})
    return isinstance(arch, Mapping) and "hf_proj_type" in arch.get("text_cfg", {})


def arch_from_state_dict(state_dict: Mapping[str, Tensor],
                         image_size: Optional[Sequence[int]] = None) -> ClipArch:
    """Reads a ViT CLIP architecture off the tensors of a state dict: OpenAI's layout, or open_clip's
    with a Hugging Face text tower (`text.transformer.*`), of which only the projection's type can be
    read (the tower's own shapes are in its Hugging Face config).

    `image_size` (H, W) is needed only for non-square inputs: a square grid is assumed otherwise.
    """
    if "visual.proj" not in state_dict:
        raise ValueError("not a ViT CLIP state dict: it has no 'visual.proj' tensor")
    width = state_dict["visual.conv1.weight"].shape[0]
    patch = state_dict["visual.conv1.weight"].shape[-1]
    num_tokens = state_dict["visual.positional_embedding"].shape[0] - 1
    if image_size is None or (image_size[0] // patch) * (image_size[1] // patch) != num_tokens:
        grid = round(math.sqrt(num_tokens))
        image_size = (patch * grid, patch * grid)
    vision_cfg = {
        "image_size": list(image_size),
        "patch_size": patch,
        "width": width,
        "layers": count_blocks(state_dict, "visual.transformer.resblocks."),
    }
    if any(key.startswith("text.transformer.") for key in state_dict):
        proj_types = {"text.proj.weight": "linear", "text.proj.0.weight": "mlp"}
        proj_type = next((kind for key, kind in proj_types.items() if key in state_dict), None)
        return {"embed_dim": state_dict["visual.proj"].shape[1], "vision_cfg": vision_cfg,
                "text_cfg": {"hf_proj_type": proj_type}}
    return {
        "embed_dim": state_dict["text_projection"].shape[1],
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "width": state_dict["ln_final.weight"].shape[0],
            "layers": count_blocks(state_dict, "transformer.resblocks."),
        },
    }


def clip_settings(state_dict: Mapping[str, Tensor], img_size: Optional[Sequence[int]]) -> Dict[str, Any]:
    """The CLIP settings of a model state dict holding CLIP under `clip_model.`: no weight file, the
    architecture read off the tensors."""
    clip_state_dict = sub_state_dict(state_dict, "clip_model.")
    return {"clip_pretrained": None, "clip_arch": arch_from_state_dict(clip_state_dict, img_size)}


def arch_from_name(name: str, image_size: Optional[Sequence[int]] = None) -> ClipArch:
    """An open_clip architecture by name (e.g. `ViT-B-16`), reduced to the fields CLIP4STR uses. With a
    Hugging Face text tower (e.g. `xlm-roberta-base-ViT-B-32`) the text fields are its pooler and projection
    types (the tower itself comes from `text_tower`), and the image tower keeps open_clip's activation
    (`quick_gelu`) and `head_width` instead of CLIP4STR's QuickGELU and 64-wide heads."""
    config = get_model_config(name)
    if config is None or "width" not in config.get("vision_cfg", {}):
        raise ValueError(f"unknown open_clip ViT architecture {name!r}")
    vision, text = config["vision_cfg"], config["text_cfg"]
    size = image_size or vision["image_size"]
    arch = {
        "embed_dim": config["embed_dim"],
        "vision_cfg": {"image_size": list(size) if isinstance(size, Sequence) else [size, size],
                       "patch_size": vision["patch_size"], "width": vision["width"], "layers": vision["layers"]},
    }
    if "hf_model_name" in text:  # open_clip's image tower as pretrained: its activation and head width
        defaults = CLIPTextCfg()
        arch["vision_cfg"]["head_width"] = vision.get("head_width", HEAD_WIDTH)
        return {**arch, "quick_gelu": bool(config.get("quick_gelu", False)),
                "text_cfg": {"hf_pooler_type": text.get("hf_pooler_type", defaults.hf_pooler_type),
                             "hf_proj_type": text.get("hf_proj_type", defaults.hf_proj_type)}}
    return {**arch, "text_cfg": {"context_length": text.get("context_length", 77),
                                 "vocab_size": text.get("vocab_size", 49408),
                                 "width": text["width"], "layers": text["layers"]}}


def build_clip(arch: Mapping[str, Any]) -> CLIP:
    """A randomly initialised open_clip CLIP with the original's modifications (QuickGELU, 64-wide heads)."""
    if is_hf_arch(arch):
        raise ValueError("this CLIP architecture has a Hugging Face text tower, which only CLIP4STR builds (with "
                         "model.text_tower set)")
    text = dict(arch["text_cfg"])
    text_cfg = CLIPTextCfg(heads=text["width"] // HEAD_WIDTH, **text)
    model = CLIP(arch["embed_dim"], vision_config(arch), text_cfg, quick_gelu=True)
    run_blocks_as_ours(model.visual.transformer, model.transformer)
    return model


def run_blocks_as_ours(*transformers: nn.Module) -> None:
    """Gives the open_clip transformers' blocks the class `ClipBlock` (a subclass without state of its own: the same
    weights and names), whose forward is `residual_block`."""
    for transformer in transformers:
        for block in transformer.resblocks:
            block.__class__ = ClipBlock


def vision_config(arch: Mapping[str, Any]) -> CLIPVisionCfg:
    """open_clip's config of the image tower of an architecture, with 64-wide heads unless it says otherwise."""
    vision = {"head_width": HEAD_WIDTH, **arch["vision_cfg"]}
    size = vision.pop("image_size")
    return CLIPVisionCfg(image_size=tuple(size) if isinstance(size, Sequence) else size, **vision)


def read_clip_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Loads CLIP weights from OpenAI's TorchScript `.pt` archives or open_clip state-dict files.

    The format is told from the file's contents, not its name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weight file not found: {path} (set model.clip_pretrained to a local "
                                f"OpenAI .pt or OpenCLIP .bin file, or to null for a random CLIP)")
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state_dict = safe_load(path)
        for key in ("state_dict", "model"):
            if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
    if not isinstance(state_dict, dict) or "visual.proj" not in state_dict:
        raise ValueError(f"{path} does not hold a CLIP ViT state dict (no 'visual.proj' key)")
    return {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def round_to_fp16(model: CLIP) -> None:
    """Rounds the tensors that OpenAI's `build_model` stores in float16 (linear and convolution
    weights and biases, attention input projections, the two projections) through float16."""
    tensors: List[Tensor] = [model.visual.proj, model.text_projection]
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            tensors += [module.weight, module.bias]
        elif isinstance(module, nn.MultiheadAttention):
            tensors += [module.in_proj_weight, module.in_proj_bias]
    with torch.no_grad():
        for tensor in tensors:
            if tensor is not None:
                tensor.copy_(tensor.half().float())


def load_pretrained_clip(path: Union[str, Path], image_size: Optional[Sequence[int]] = None) -> Tuple[CLIP, ClipArch]:
    """Builds CLIP from a pretrained weight file, as the original's `clip.load` did."""
    state_dict = read_clip_state_dict(path)
    arch = arch_from_state_dict(state_dict, image_size)
    model = build_clip(arch)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    round_to_fp16(model)
    return model, arch


def create_clip(clip_pretrained: Optional[str], clip_arch: Union[str, ClipArch, None],
                image_size: Optional[Sequence[int]] = None) -> Tuple[CLIP, ClipArch]:
    """CLIP from a pretrained weight file (a local OpenAI `.pt` or OpenCLIP `.bin`) or, when there is
    none, with random weights from `clip_arch` (an open_clip architecture name or an architecture)."""
    if clip_pretrained:
        return load_pretrained_clip(clip_pretrained, image_size)
    if clip_arch:
        arch = arch_from_name(clip_arch, image_size) if isinstance(clip_arch, str) else clip_arch
        return build_clip(arch), arch
    raise ValueError("set model.clip_pretrained to a CLIP weight file, or model.clip_arch to an "
                     "architecture for a randomly initialised CLIP")


def build_on_clip(model_class: Callable[..., nn.Module], config: Mapping[str, Any]) -> nn.Module:
    """`model_class(clip, **settings)` with the CLIP of `config` (see `create_clip`) and the other
    arguments of `model_class` taken from `config`."""
    clip_model, _ = create_clip(config.get("clip_pretrained"), config.get("clip_arch"), config.get("img_size"))
    return model_class(clip_model, **arguments_from(model_class, config))


def arguments_from(model_class: Callable[..., nn.Module], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The arguments of `model_class` after its first, taken from `config`."""
    return {name: config[name] for name in list(inspect.signature(model_class).parameters)[1:]}


class Prefixes(NamedTuple):
    """How the text encoder's rows map onto its captions (see `shared_prefixes`): `first` (R,) picks the row of
    each distinct prefix from the caption positions, `groups` (N * L,) the prefix of each caption position."""

    first: Tensor
    groups: Tensor
    length: int


def residual_block(block: nn.Module, x: Tensor, attn_mask: Optional[Tensor] = None,
                   prefixes: Optional[Prefixes] = None) -> Tensor:
    """An open_clip residual attention block on batch-first tokens (N, L, D): the same computation as
    its own forward, written out on contiguous tensors (faster than `nn.MultiheadAttention` on a CPU).
    With `prefixes`, `x` holds the distinct caption prefixes (R, D): the projections and the MLP run on
    them, the attention itself on every caption."""
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    if prefixes is not None:
        qkv = qkv[prefixes.groups].view(-1, prefixes.length, qkv.shape[-1])
    attended = attend(attn, qkv, attn_mask)
    if prefixes is not None:
        attended = attended.flatten(0, 1)[prefixes.first]
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(mlp(block, block.ln_2(x)))


class RunsResidualBlock(nn.Module):
    """A block whose forward is `residual_block`, recomputed in the backward pass when told to checkpoint.
    The towers call their blocks, never their weights from outside, so that wrappers that work on a module's
    calls see every use of its parameters (FSDP gathers a sharded block's parameters around its forward)."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, *, prefixes: Optional[Prefixes] = None,
                checkpoint: bool = False) -> Tensor:
        return maybe_checkpoint(checkpoint, residual_block, self, x, attn_mask, prefixes)


class ClipBlock(RunsResidualBlock, ResidualAttentionBlock):
    """open_clip's residual attention block, run by `residual_block` (`build_clip` gives CLIP's blocks this
    class: it adds no state, so weights and names stay open_clip's)."""


def attend(attn: nn.MultiheadAttention, qkv: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Multi-head attention of projected queries, keys and values (N, L, 3 * D), before the output
    projection: (N, L, D)."""
    q, k, v = qkv.unflatten(-1, (3, attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).flatten(2)


def mlp(block: nn.Module, x: Tensor) -> Tensor:
    """The block's MLP. Its activation is QuickGELU in CLIP4STR's CLIP (only an open_clip image tower
    beside a Hugging Face text tower may have GELU): out of autograd, QuickGELU runs in place and, on a
    CPU, a band of rows at a time, so that each band stays in cache: the same numbers, about 5 % less
    image-encoder time at batch 8 (not in an ONNX export, whose graph would keep the bands of the example
    batch)."""
    hidden = block.mlp.c_fc(x)
    if hidden.requires_grad or torch.onnx.is_in_onnx_export() or not isinstance(block.mlp.gelu, QuickGELU):
        return block.mlp.c_proj(block.mlp.gelu(hidden))
    rows = hidden.view(-1, hidden.shape[-1])
    band_rows = QUICK_GELU_BAND_ROWS if rows.device.type == "cpu" else len(rows)
    gate = rows.new_empty(min(band_rows, len(rows)), rows.shape[1])
    for band in rows.split(band_rows):
        band_gate = torch.mul(band, 1.702, out=gate[:len(band)]).sigmoid_()
        band.mul_(band_gate)
    return block.mlp.c_proj(hidden)


def vision_features(clip: CLIP, images: Tensor, capture: Sequence[int] = ()) -> Tuple[Tensor, List[Tensor]]:
    """All image tokens (CLS first) after `ln_post`, unprojected (N, 1 + grid, W), and the inputs of
    the vision blocks numbered in `capture`, in that order."""
    visual = clip.visual
    x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    inputs = {}
    for i, block in enumerate(visual.transformer.resblocks):
        if i in capture:
            inputs[i] = x
        x = block(x, checkpoint=visual.transformer.grad_checkpointing)
    return visual.ln_post(x), [inputs[i] for i in capture]


def clip_token_grid(clip: CLIP) -> Tuple[int, Tuple[int, int]]:
    """CLIP's image tokens: the CLS token, then the patch grid (rows, columns)."""
    return 1, tuple(clip.visual.grid_size)


def encode_image_tokens(clip: CLIP, images: Tensor, projection: bool = True) -> Tensor:
    """All image tokens (CLS first) after `ln_post`, projected to the joint space unless told not
    to: (N, 1 + grid, D)."""
    x = vision_features(clip, images)[0]
    return x @ clip.visual.proj if projection else x


def shared_prefixes(token_ids: Tensor) -> Tuple[Tensor, Tensor]:
    """Groups the positions of token rows (N, L) by the tokens up to and including them. Returns the
    flat index (into N * L) of one position of each of the R groups, and the group of every
    position (N * L,), groups numbered in order of position. Best run on the host: it takes one
    `unique` per position."""
    rows, length = token_ids.shape
    groups = torch.empty(rows, length, dtype=torch.long, device=token_ids.device)
    previous = torch.zeros(rows, dtype=torch.long, device=token_ids.device)
    count = 0
    for position in range(length):
        keys = torch.stack([previous, token_ids[:, position].long()], dim=1)
        distinct, previous = torch.unique(keys, dim=0, return_inverse=True)
        groups[:, position] = previous + count
        count += len(distinct)
    groups = groups.flatten()
    flat = torch.arange(len(groups), device=groups.device)
    first = torch.full((count,), len(groups), dtype=torch.long, device=groups.device)
    return first.scatter_reduce_(0, groups, flat, "amin"), groups


def encode_text_tokens(clip: CLIP, token_ids: Tensor) -> Tensor:
    """Features of every position of a short causal context (N, L), best given on the host, projected:
    (N, L, D) on CLIP's device.

    Under the causal mask a position's features depend only on the tokens up to it, so positions
    that share them (a common start of two captions, or a caption given twice) are computed once:
    the blocks' projections and MLPs run on the distinct prefixes only, and only the attention itself on
    every caption. An ONNX export computes every position (the grouping depends on the tokens)."""
    batch, length = token_ids.shape
    device = clip.token_embedding.weight.device
    if torch.onnx.is_in_onnx_export():
        first = groups = torch.arange(batch * length, device=token_ids.device)
        tokens = token_ids.flatten()
    else:
        host_ids = token_ids.cpu()
        first, groups = shared_prefixes(host_ids)
        tokens = host_ids.flatten()[first].to(device)
        first, groups = first.to(device), groups.to(device)
    prefixes = Prefixes(first, groups, length)
    x = clip.token_embedding(tokens) + clip.positional_embedding[first % length]
    causal = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
    for block in clip.transformer.resblocks:
        x = block(x, causal, prefixes=prefixes, checkpoint=clip.transformer.grad_checkpointing)
    return (clip.ln_final(x) @ clip.text_projection)[groups].view(batch, length, -1)


def arch_to_config(arch: ClipArch) -> Dict[str, Any]:
    """A plain-data copy of an architecture, fit for hyper-parameters."""
    return {key: _plain(value) for key, value in arch.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value if value is None or isinstance(value, (bool, str)) else int(value)
