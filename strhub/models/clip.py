"""The CLIP backbone of CLIP4STR and STR-Adapter, built with open_clip.

CLIP4STR modifies CLIP in ways its released checkpoints depend on, so the backbone is built as the
original built it, whatever the weights' source: QuickGELU in both towers, heads = width // 64
(20 vision heads for ViT-H/14), pretrained weights rounded through float16. How the towers run (image features for
all tokens after `ln_post` and the projection, text features for all positions of a short causal context) is
`strhub.models.clip_blocks`.
"""
import inspect
import math
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from open_clip.factory import get_model_config
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor, nn

from strhub.models.clip_blocks import run_blocks_as_ours
from strhub.models.safe_load import safe_load
from strhub.models.state_dicts import count_blocks, sub_state_dict
from strhub.models.torchscript_weights import read_torchscript_weights

HEAD_WIDTH = 64
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
        state_dict = read_torchscript_weights(path)
    else:
        state_dict = safe_load(path)
        for key in ("state_dict", "model"):
            if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
    if not isinstance(state_dict, dict) or "visual.proj" not in state_dict:
        raise ValueError(f"{path} does not hold a CLIP ViT state dict (no 'visual.proj' key)")
    # OpenAI's archives hold the first three; an archive of open_clip's CLIP holds its causal mask, built anew
    return {k: v for k, v in state_dict.items()
            if k not in ("input_resolution", "context_length", "vocab_size", "attn_mask")}


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


def arch_to_config(arch: ClipArch) -> Dict[str, Any]:
    """A plain-data copy of an architecture, fit for hyper-parameters."""
    return {key: _plain(value) for key, value in arch.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value if value is None or isinstance(value, (bool, str)) else int(value)
