"""Deterministic weights of tiny STR-Adapter and PARSeq models for the family equivalence fixtures.

Companion of ``weights.py`` (the tiny CLIP4STR); see ``README.md``. Eight variants, each a complete
state dict in the key layout and order of the official classes, with the ``hyper_parameters`` the
official training would store for it (Hydra composition of the official configs, as
``save_hyperparameters()`` records it):

* ``str_adapter_<type>`` for ``<type>`` in ``linear``, ``attention``, ``ladder``, ``linear_ladder``,
  ``ladder_pruning`` (VamosC/CLIP4STR ``strhub.models.str_adapter.system.STRAdapter``): the tiny CLIP of
  ``weights.py`` (same tensors: vision width 128, 3 blocks, patch 32 at 224x224, text width 64,
  2 blocks, joint width 64) under ``clip_model.``, an adapter under ``adapter.`` and a PARSeq-layout
  decoder of width 64 (8 heads, MLP 256, one layer, 94-character charset).
* ``clip4str_parseq`` and ``clip4str_parseq_proj`` (VamosC/CLIP4STR ``strhub.models.parseq.system.PARSeq``):
  a timm ViT encoder without class token (``encoder.*``) on 32x128 images. The first has width 64,
  2 blocks, 2 heads and a non-square 4x8 patch (128 tokens) and a 64-wide decoder with 4 heads; the
  second has width 576 (> 512, so the official class adds ``proj`` = Linear(576, 512)), 1 block, 9 heads,
  patch 8x16 (32 tokens) and a 512-wide decoder with 8 heads.
* ``baudm_parseq`` (baudm/parseq ``strhub.models.parseq.system.PARSeq`` holding the plain ``nn.Module``
  ``strhub.models.parseq.model.PARSeq`` as ``self.model``): the same tiny architecture as
  ``clip4str_parseq``. Its ``.pt`` is the plain model state dict (like the released ``parseq-*.pt``),
  its ``.ckpt`` holds the Lightning state dict, whose keys start with ``model.``.

Weights are random (one seeded ``torch.Generator`` per variant), except that each decoder's EOS logit
is shaped as in ``weights.py`` (``_shape_eos``) so that on the fixture images the decoded strings have
varied lengths and the batch-level early stop of the AR decoding happens at different steps for the
batch of 24 and for single images. The shaping constants were found by a small search on the
official code (in the team's harness, outside this repository).

This module imports nothing from ``strhub``; it needs torch only (and ``weights.py`` beside it).
"""
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor


def _load_clip4str_weights():
    spec = importlib.util.spec_from_file_location("clip4str_fixture_weights_for_families",
                                                  Path(__file__).resolve().parent / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_w = _load_clip4str_weights()
_Maker = _w._Maker
CHARSET_36 = _w.CHARSET_36
CHARSET_94 = _w.CHARSET_94
MAX_LABEL_LENGTH = _w.MAX_LABEL_LENGTH  # 25; pos_queries has 26 rows
NUM_TOKENS = _w.NUM_TOKENS  # 97: EOS + 94 characters + BOS + PAD (text_embed rows)
NUM_CLASSES = _w.NUM_CLASSES  # 95: EOS + 94 characters (head rows)

STR_ADAPTER_TYPES = ("linear", "attention", "ladder", "linear_ladder", "ladder_pruning")
PARSEQ_VARIANTS = ("clip4str_parseq", "clip4str_parseq_proj", "baudm_parseq")
VARIANTS = tuple(f"str_adapter_{t}" for t in STR_ADAPTER_TYPES) + PARSEQ_VARIANTS

# The file of tests/reference that holds each variant's official outputs.
OUTPUT_FILES = {v: ("str_adapter_outputs.pt" if v.startswith("str_adapter") else "parseq_outputs.pt")
                for v in VARIANTS}

# Per-variant architecture (the part that is not in weights.py). ``block_ids`` / ``prune_reduction``
# of linear and attention are the model-config defaults, which those adapters ignore (block 4, 8, 11
# do not exist in the 3-block tiny CLIP; the official class does not check).
STR_ADAPTER_ARCH: Dict[str, Dict[str, Any]] = {
    "linear": {"block_ids": [0, 4, 8, 11], "prune_reduction": 4},
    "attention": {"block_ids": [0, 4, 8, 11], "prune_reduction": 4},
    "ladder": {"block_ids": [0, 2], "prune_reduction": 4},
    "linear_ladder": {"block_ids": [1, 2], "prune_reduction": 4},
    "ladder_pruning": {"block_ids": [0, 1, 2], "prune_reduction": 4},
}
STR_ADAPTER_DEC_NUM_HEADS = 8
STR_ADAPTER_IMAGE_SIZE = (224, 224)
PARSEQ_ARCH: Dict[str, Dict[str, Any]] = {
    "clip4str_parseq": {"img_size": [32, 128], "patch_size": [4, 8], "embed_dim": 64, "enc_num_heads": 2,
                        "enc_mlp_ratio": 4, "enc_depth": 2, "dec_num_heads": 4, "dec_mlp_ratio": 4, "dec_depth": 1},
    "clip4str_parseq_proj": {"img_size": [32, 128], "patch_size": [8, 16], "embed_dim": 576, "enc_num_heads": 9,
                             "enc_mlp_ratio": 4, "enc_depth": 1, "dec_num_heads": 8, "dec_mlp_ratio": 4,
                             "dec_depth": 1},
    "baudm_parseq": {"img_size": [32, 128], "patch_size": [4, 8], "embed_dim": 64, "enc_num_heads": 2,
                     "enc_mlp_ratio": 4, "enc_depth": 2, "dec_num_heads": 4, "dec_mlp_ratio": 4, "dec_depth": 1},
}

# One generator seed per variant (the STR-Adapter CLIP part always uses seed 0, as in weights.py).
# baudm_parseq deliberately shares clip4str_parseq's seed and shaping: the two official PARSeq classes
# then hold the very same tensors (only the ``model.`` prefix of the Lightning keys differs).
SEEDS = {"str_adapter_linear": 1, "str_adapter_attention": 2, "str_adapter_ladder": 3,
         "str_adapter_linear_ladder": 4, "str_adapter_ladder_pruning": 5, "clip4str_parseq": 6,
         "clip4str_parseq_proj": 7, "baudm_parseq": 6}


def _tuning(ramp: float, ramp_cap: float, bias: float, gain: float, cross_scale: float, eos_weight: float,
            head_scale: float) -> Dict[str, float]:
    return {"ramp": ramp, "ramp_cap": ramp_cap, "bias": bias, "gain": gain, "pos_scale": 0.0,
            "cross_scale": cross_scale, "eos_weight": eos_weight, "eos_noise": 0.0, "head_scale": head_scale}


# EOS shaping of each decoder (see _shape_eos), found by a random search on the official code. Chosen
# for: decoded lengths spread over 0..9-13, a batch early stop later than the earliest single-image
# stop and before 26 steps, |logits| <= ~58, and every argmax decision that feeds a later step or the
# decoded string (AR steps, refinement contexts, NAR, validation mode) at least 5.9e-3 from a tie.
EOS_TUNING: Dict[str, Dict[str, float]] = {
    "str_adapter_linear": _tuning(1.14, 6.0, 6.2, 7.83, 3.93, 1.32, 3.72),
    "str_adapter_attention": _tuning(1.65, 7.0, 4.54, 6.08, 2.52, 1.51, 3.8),
    "str_adapter_ladder": _tuning(1.63, 6.0, 5.69, 8.33, 3.47, 1.53, 3.73),
    "str_adapter_linear_ladder": _tuning(1.11, 6.0, 6.21, 6.42, 3.68, 1.34, 4.38),
    "str_adapter_ladder_pruning": _tuning(0.93, 5.0, 5.91, 8.69, 3.87, 1.95, 4.93),
    "clip4str_parseq": _tuning(1.02, 7.0, 4.97, 8.13, 3.32, 1.68, 5.34),
    "clip4str_parseq_proj": _tuning(0.9, 5.0, 6.39, 5.25, 2.18, 1.73, 3.28),
    "baudm_parseq": _tuning(1.02, 7.0, 4.97, 8.13, 3.32, 1.68, 5.34),
}

_FAKE_CLIP = "/PUT/YOUR/PATH/HERE/pretrained/clip/tiny-ViT-32-fixture.bin"
_CLIP4STR_CODE_PATH = "/home/shuai/code/CLIP4STR"  # main.yaml's ${abs_root}/code/CLIP4STR, stored by every run


def _common_head(lr: float, weight_decay: float, img_size: List[int], patch_size: List[int]) -> Dict[str, Any]:
    return {
        "charset_train": CHARSET_94,
        "charset_test": CHARSET_36,
        "max_label_length": MAX_LABEL_LENGTH,
        "batch_size": 384,
        "lr": lr,
        "warmup_pct": 0.075,
        "weight_decay": weight_decay,
        "img_size": list(img_size),
        "patch_size": list(patch_size),
    }


_DECODING = {"perm_num": 6, "perm_forward": True, "perm_mirrored": True, "decode_ar": True, "refine_iters": 1,
             "dropout": 0.1}


def _str_adapter_hparams(adapter_type: str) -> Dict[str, Any]:
    # configs/main.yaml + model/str_adapter.yaml + experiment/str_adapter.yaml + charset/94_full, in the
    # order save_hyperparameters() stores them (signature arguments, then **kwargs in config order).
    h = _common_head(8.4e-05, 0.2, [224, 224], [16, 16])
    h.update({"dec_num_heads": STR_ADAPTER_DEC_NUM_HEADS, "dec_mlp_ratio": 4, "dec_depth": 1})
    h.update(_DECODING)
    h.update({
        "code_path": _CLIP4STR_CODE_PATH,
        "name": "str_adapter",
        "embed_dim": 512,
        "adapter_type": adapter_type,
        "block_ids": list(STR_ADAPTER_ARCH[adapter_type]["block_ids"]),
        "prune_reduction": STR_ADAPTER_ARCH[adapter_type]["prune_reduction"],
        "coef_lr": 19.0,
        "coef_wd": 1.0,
        "freeze_backbone": True,
        # Deliberately a path that does not exist: the checkpoint must be usable without the CLIP file.
        "clip_pretrained": _FAKE_CLIP,
        "find_unused_parameters": True,
    })
    return h


def _parseq_hparams(variant: str) -> Dict[str, Any]:
    # configs/main.yaml + model/parseq.yaml + experiment/parseq.yaml + charset/94_full (of each repository).
    arch = PARSEQ_ARCH[variant]
    h = _common_head(0.0007, 0.0, arch["img_size"], arch["patch_size"])
    for key in ("embed_dim", "enc_num_heads", "enc_mlp_ratio", "enc_depth", "dec_num_heads", "dec_mlp_ratio",
                "dec_depth"):
        h[key] = arch[key]
    h.update(_DECODING)
    if variant.startswith("clip4str"):
        h["code_path"] = _CLIP4STR_CODE_PATH
    h["name"] = "parseq"
    return h


def make_hyper_parameters(variant: str, **overrides: Any) -> Dict[str, Any]:
    """The ``hyper_parameters`` entry the official training would store for ``variant``."""
    if variant.startswith("str_adapter_"):
        hparams = _str_adapter_hparams(variant[len("str_adapter_"):])
    elif variant in PARSEQ_VARIANTS:
        hparams = _parseq_hparams(variant)
    else:
        raise KeyError(variant)
    hparams.update(overrides)
    return hparams


def image_size(variant: str) -> Tuple[int, int]:
    """(height, width) the test transform resizes to for ``variant``."""
    if variant.startswith("str_adapter_"):
        return STR_ADAPTER_IMAGE_SIZE
    h, w = PARSEQ_ARCH[variant]["img_size"]
    return h, w


# ----------------------------------------------------------------------------------------------------
# Tensor makers (every tensor is drawn from the variant's generator; the state dict is then put in the
# official key order).

def _parseq_decoder(m: _Maker, dim: int, mlp_ratio: int) -> None:
    """PARSeq layout: decoder.layers.0.*, decoder.norm.*, head.*, text_embed.embedding.weight, pos_queries."""
    m.normal("pos_queries", (1, MAX_LABEL_LENGTH + 1, dim), 1.0)
    layer = "decoder.layers.0"
    m.attention(layer + ".self_attn", dim)
    m.attention(layer + ".cross_attn", dim)
    m.linear(layer + ".linear1", dim * mlp_ratio, dim)
    m.linear(layer + ".linear2", dim, dim * mlp_ratio)
    for norm in ("norm1", "norm2", "norm_q", "norm_c"):
        m.layer_norm(f"{layer}.{norm}", dim)
    m.layer_norm("decoder.norm", dim)
    m.linear("head", NUM_CLASSES, dim, bias_std=0.3)
    m.normal("text_embed.embedding.weight", (NUM_TOKENS, dim), 0.1)


def _shape_eos(m: _Maker, ramp: float, ramp_cap: float, bias: float, gain: float, pos_scale: float,
               cross_scale: float, eos_weight: float, eos_noise: float, head_scale: float) -> None:
    """``weights._shape_eos`` for the PARSeq key layout.

    ``e`` is a zero-mean unit direction of the decoder space and ``u`` a random unit direction. The
    positional query ``k`` keeps ``pos_scale`` of its random component along ``e`` and gets
    ``ramp * min(k - 8, ramp_cap) * e``; the cross-attention output projection is scaled by
    ``cross_scale`` and gets ``gain * e u^T`` (an image-dependent push along ``e``); the EOS row of the
    head becomes ``eos_noise * row + eos_weight * e`` and its bias ``bias``; finally the whole head is
    scaled by ``head_scale``.
    """
    sd = m.out
    dim = sd["pos_queries"].shape[-1]
    e = m.randn(dim)
    e = e - e.mean()
    e = e / e.norm()
    u = m.randn(dim)
    u = u / u.norm()
    pos = sd["pos_queries"]
    pos -= (1.0 - pos_scale) * (pos @ e)[..., None] * e
    steps = (torch.arange(MAX_LABEL_LENGTH + 1, dtype=torch.float32) - 8.0).clamp(max=ramp_cap)
    pos += ramp * steps[None, :, None] * e
    out_proj = sd["decoder.layers.0.cross_attn.out_proj.weight"]
    out_proj *= cross_scale
    out_proj += gain * torch.outer(e, u)
    head = sd["head.weight"]
    head[0] = eos_noise * head[0] + eos_weight * e
    sd["head.bias"][0] = bias
    head *= head_scale
    sd["head.bias"] *= head_scale


def _clip_block_pruned(m: _Maker, prefix: str, width: int, reduction: int) -> None:
    """The official ResidualAttentionBlockCustom: q/k/v, out_proj inputs and MLP hidden reduced by ``reduction``."""
    inner, hidden = width // reduction, 4 * width // reduction
    m.normal(prefix + ".attn.in_proj_weight", (3 * inner, width), width ** -0.5)
    m.normal(prefix + ".attn.in_proj_bias", (3 * inner,), 0.05)
    m.linear(prefix + ".attn.out_proj", width, inner)
    m.layer_norm(prefix + ".ln_1", width)
    m.linear(prefix + ".mlp.c_fc", hidden, width)
    m.linear(prefix + ".mlp.c_proj", width, hidden)
    m.layer_norm(prefix + ".ln_2", width)


def _linear_adapter(m: _Maker, prefix: str, width: int, reduction: int) -> None:
    """The official LinearAdapter: fc.0 = Linear(c, c // reduction, bias=False), fc.2 = Linear(c // reduction, c, bias=False)."""
    m.normal(prefix + ".fc.0.weight", (width // reduction, width), width ** -0.5)
    m.normal(prefix + ".fc.2.weight", (width, width // reduction), (width // reduction) ** -0.5)


def _adapter(m: _Maker, adapter_type: str) -> None:
    vw, ew = _w.VISION_WIDTH, _w.EMBED_DIM
    arch = STR_ADAPTER_ARCH[adapter_type]
    n = len(arch["block_ids"])
    if adapter_type == "linear":
        _linear_adapter(m, "adapter", ew, 2)
    elif adapter_type == "attention":
        m.clip_block("adapter.attn", ew)
    else:
        # Gates W = sigmoid(alpha / 0.1): non-zero alpha so that the gates differ from 0.5.
        m.normal("adapter.alpha", (n,), 0.15)
        m.normal("adapter.proj", (vw, ew), vw ** -0.5)
        for i in range(n):
            p = f"adapter.resblocks.{i}"
            if adapter_type == "ladder":
                m.clip_block(p, vw)
            elif adapter_type == "linear_ladder":
                _linear_adapter(m, p, vw, 4)
            elif adapter_type == "ladder_pruning":
                _clip_block_pruned(m, p, vw, arch["prune_reduction"])
            else:
                raise KeyError(adapter_type)
        m.layer_norm("adapter.ln_post", vw)


def _vit_encoder(m: _Maker, arch: Dict[str, Any]) -> None:
    """timm VisionTransformer without class token (LayerNorm eps 1e-6, qkv bias)."""
    d = arch["embed_dim"]
    ph, pw = arch["patch_size"]
    tokens = (arch["img_size"][0] // ph) * (arch["img_size"][1] // pw)
    hidden = d * arch["enc_mlp_ratio"]
    m.normal("encoder.pos_embed", (1, tokens, d), 0.3)
    m.normal("encoder.patch_embed.proj.weight", (d, 3, ph, pw), (3 * ph * pw) ** -0.5)
    m.normal("encoder.patch_embed.proj.bias", (d,), 0.05)
    for i in range(arch["enc_depth"]):
        b = f"encoder.blocks.{i}"
        m.layer_norm(b + ".norm1", d)
        m.linear(b + ".attn.qkv", 3 * d, d)
        m.linear(b + ".attn.proj", d, d)
        m.layer_norm(b + ".norm2", d)
        m.linear(b + ".mlp.fc1", hidden, d)
        m.linear(b + ".mlp.fc2", d, hidden)
    m.layer_norm("encoder.norm", d)


def _order(tensors: Dict[str, Tensor], order: List[str]) -> "OrderedDict[str, Tensor]":
    assert sorted(tensors) == sorted(order), sorted(set(tensors) ^ set(order))
    return OrderedDict((k, tensors[k].float().contiguous()) for k in order)


def _decoder_keys() -> List[str]:
    layer = "decoder.layers.0"
    keys = []
    for attn in ("self_attn", "cross_attn"):
        keys += [f"{layer}.{attn}.in_proj_weight", f"{layer}.{attn}.in_proj_bias",
                 f"{layer}.{attn}.out_proj.weight", f"{layer}.{attn}.out_proj.bias"]
    for name in ("linear1", "linear2", "norm1", "norm2", "norm_q", "norm_c"):
        keys += [f"{layer}.{name}.weight", f"{layer}.{name}.bias"]
    return keys + ["decoder.norm.weight", "decoder.norm.bias", "head.weight", "head.bias",
                   "text_embed.embedding.weight"]


def _build_str_adapter(adapter_type: str, tuning: Dict[str, float]) -> "OrderedDict[str, Tensor]":
    clip = _Maker(0)
    _w._clip(clip)  # exactly the CLIP tensors of weights.make_state_dict()
    m = _Maker(SEEDS["str_adapter_" + adapter_type])
    _parseq_decoder(m, _w.EMBED_DIM, 4)
    _shape_eos(m, **tuning)
    _adapter(m, adapter_type)
    tensors = dict(clip.out)
    tensors.update(m.out)
    adapter_keys = [k for k in m.out if k.startswith("adapter.")]
    if adapter_type not in ("linear", "attention"):
        # Official order: the adapter's own parameters (alpha, proj), then resblocks, then ln_post.
        adapter_keys = (["adapter.alpha", "adapter.proj"]
                        + [k for k in adapter_keys if k.startswith("adapter.resblocks.")]
                        + ["adapter.ln_post.weight", "adapter.ln_post.bias"])
    order = ["pos_queries"] + list(clip.out) + adapter_keys + _decoder_keys()
    return _order(tensors, order)


def _build_parseq(variant: str, tuning: Dict[str, float]) -> "OrderedDict[str, Tensor]":
    arch = PARSEQ_ARCH[variant]
    dec_dim = 512 if arch["embed_dim"] > 512 else arch["embed_dim"]
    m = _Maker(SEEDS[variant])
    _vit_encoder(m, arch)
    if arch["embed_dim"] > 512:
        m.linear("proj", 512, arch["embed_dim"])
    _parseq_decoder(m, dec_dim, arch["dec_mlp_ratio"])
    _shape_eos(m, **tuning)
    enc_keys = [k for k in m.out if k.startswith("encoder.")]
    proj_keys = ["proj.weight", "proj.bias"] if arch["embed_dim"] > 512 else []
    return _order(m.out, ["pos_queries"] + enc_keys + proj_keys + _decoder_keys())


def _build(variant: str, tuning: Optional[Dict[str, float]] = None) -> "OrderedDict[str, Tensor]":
    tuning = EOS_TUNING[variant] if tuning is None else tuning
    if variant.startswith("str_adapter_"):
        return _build_str_adapter(variant[len("str_adapter_"):], tuning)
    if variant in PARSEQ_VARIANTS:
        return _build_parseq(variant, tuning)
    raise KeyError(variant)


def make_state_dict(variant: str) -> "OrderedDict[str, Tensor]":
    """The variant's state dict as the official file holds it (float32, official key order).

    For ``baudm_parseq`` this is the plain ``nn.Module`` state dict (no ``model.`` prefix), as in the
    released ``parseq-*.pt``; ``make_checkpoint`` adds the prefix of the Lightning system.
    """
    return _build(variant)


def lightning_state_dict(variant: str, state_dict: Optional[Dict[str, Tensor]] = None) -> "OrderedDict[str, Tensor]":
    """The state dict of the official LightningModule (``model.``-prefixed for ``baudm_parseq``)."""
    sd = make_state_dict(variant) if state_dict is None else state_dict
    if variant == "baudm_parseq":
        return OrderedDict(("model." + k, v) for k, v in sd.items())
    return OrderedDict(sd)


def make_checkpoint(variant: str, state_dict: Optional[Dict[str, Tensor]] = None,
                    **hparam_overrides: Any) -> Dict[str, Any]:
    """A Lightning-style checkpoint dict: the LightningModule state dict and the hyper-parameters."""
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.2.0.post0" if variant == "baudm_parseq" else "1.6.5",
        "state_dict": lightning_state_dict(variant, state_dict),
        "hparams_name": "kwargs",
        "hyper_parameters": make_hyper_parameters(variant, **hparam_overrides),
    }


def write_weights(directory: Union[str, Path], variants: Optional[Union[str, List[str]]] = None
                  ) -> Dict[str, Tuple[Path, Path]]:
    """Write ``<variant>.pt`` (plain state dict) and ``<variant>.ckpt`` (Lightning-style) into ``directory``.

    ``variants``: one name, a list, or None for all. Returns {variant: (pt_path, ckpt_path)}.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if variants is None:
        variants = list(VARIANTS)
    elif isinstance(variants, str):
        variants = [variants]
    paths = {}
    for variant in variants:
        state_dict = make_state_dict(variant)
        pt_path, ckpt_path = directory / f"{variant}.pt", directory / f"{variant}.ckpt"
        torch.save(state_dict, pt_path)
        torch.save(make_checkpoint(variant, state_dict=state_dict), ckpt_path)
        paths[variant] = (pt_path, ckpt_path)
    return paths
