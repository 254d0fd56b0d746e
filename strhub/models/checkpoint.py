"""The model configs, and CLIP4STR checkpoints (including the original's released files) read into the
plain model. Nothing here needs Lightning, so inference (`read.py`, the speed benchmark) runs without it.
"""
import logging
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from omegaconf import OmegaConf
from torch import Tensor

from strhub.models.clip4str.clip import arch_from_state_dict, count_blocks
from strhub.models.clip4str.model import CLIP4STR, build_model
from strhub.models.layout import return_freed_memory
from strhub.models.safe_load import InvalidCheckpointError, safe_load

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Values the original's model class falls back on for keys that a Lightning checkpoint's
# hyper-parameters lack (older checkpoints predate some keys); they differ from the YAML defaults.
LEGACY_FALLBACKS = {"use_language_model": False, "context_length": 20, "text_freeze_nlayer": -1, "coef_lr": 1.0}

PREFIXES = ("model.", "")


def model_config(experiment: Optional[str] = None, config_dir: Path = CONFIG_DIR) -> Dict[str, Any]:
    """The `model` section of `main.yaml` with the default charset and model configs and, optionally,
    an experiment's overrides, resolved to plain data (no Hydra run needed)."""
    if not (config_dir / "main.yaml").is_file():
        raise FileNotFoundError(f"config directory {config_dir} has no main.yaml; install strhub from its "
                                f"source tree (pip install -e .) so that configs/ sits beside the package")
    main = OmegaConf.load(config_dir / "main.yaml")
    defaults = {key: value for entry in main.get("defaults", []) if not isinstance(entry, str)
                for key, value in entry.items()}
    parts = [OmegaConf.create({"model": main.model}),
             OmegaConf.load(config_dir / "charset" / f"{defaults['charset']}.yaml"),
             OmegaConf.create({"model": OmegaConf.load(config_dir / "model" / f"{defaults['model']}.yaml")})]
    if experiment:
        path = config_dir / "experiment" / f"{experiment}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))
            raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(names)}")
        parts.append(OmegaConf.load(path))
    merged = OmegaConf.merge(*parts)
    config = OmegaConf.to_container(merged.model, resolve=True)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The state dict and hyper-parameters (empty for a plain state dict) of a checkpoint file, read with
    `safe_load` (PyTorch's weights-only reader)."""
    path = Path(path)
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, Mapping):
        raise InvalidCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise InvalidCheckpointError(f"{path} has no state dict of tensors")
    return dict(state_dict), hparams


def strip_prefix(state_dict: Mapping[str, Tensor], path: Path) -> Dict[str, Tensor]:
    """The state dict in the model's own layout: ours under `model.`, the original's at the top."""
    for prefix in PREFIXES:
        if f"{prefix}clip_model.visual.proj" in state_dict and f"{prefix}visual_decoder.head.weight" in state_dict:
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    sample = ", ".join(list(state_dict)[:5])
    raise InvalidCheckpointError(f"{path} is not a CLIP4STR checkpoint: no 'clip_model.visual.proj' and "
                                 f"'visual_decoder.head.weight' tensors (its keys start with: {sample})")


def config_from_state_dict(state_dict: Mapping[str, Tensor], hparams: Mapping[str, Any],
                           overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Architecture settings read off the tensors of a CLIP4STR state dict."""
    clip_sd = {k[len("clip_model."):]: v for k, v in state_dict.items() if k.startswith("clip_model.")}
    img_size = overrides.get("img_size", hparams.get("img_size"))
    decoder = {k[len("visual_decoder."):]: v for k, v in state_dict.items() if k.startswith("visual_decoder.")}
    width = decoder["pos_queries"].shape[-1]
    return {
        "clip_pretrained": None,
        "clip_arch": arch_from_state_dict(clip_sd, img_size),
        "max_label_length": decoder["pos_queries"].shape[1] - 1,
        "dec_depth": count_blocks(decoder, "layers."),
        "dec_mlp_ratio": decoder["layers.0.linear1.weight"].shape[0] // width,
        "use_language_model": "cross_decoder.head.weight" in state_dict,
        "use_share_dim": width == clip_sd["text_projection"].shape[1],
    }


def read_model_checkpoint(path: Path, overrides: Mapping[str, Any]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """The model's state dict (floating tensors as float32) and its full model config: settings come
    from the checkpoint's hyper-parameters where it has them, else from the configs; the
    architecture is read off the tensors, and `overrides` win over both."""
    state_dict, hparams = read_checkpoint(path)
    state_dict = strip_prefix(state_dict, path)
    config = model_config()
    if hparams:
        config.update({k: v for k, v in LEGACY_FALLBACKS.items() if k not in hparams})
        config.update(hparams)
    config.update(config_from_state_dict(state_dict, hparams, overrides))
    config.update(overrides)
    num_classes = state_dict["visual_decoder.head.weight"].shape[0]
    if len(config["charset_train"]) != num_classes - 1:
        raise InvalidCheckpointError(
            f"{path} predicts {num_classes - 1} characters but charset_train has {len(config['charset_train'])}; "
            f"pass charset_train=<the training charset> to load it")
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, config


def assign_weights(model: CLIP4STR, state_dict: Mapping[str, Tensor], path: Path) -> None:
    """Makes the checkpoint's tensors the parameters of `model` (built on the meta device: no
    second copy is ever made)."""
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise InvalidCheckpointError(f"{path} does not fit the model it describes: {err}") from err
    clip = model.clip_model
    clip.attn_mask = torch.full(clip.attn_mask.shape, float("-inf")).triu(1)  # open_clip's unsaved buffer


def load_model(checkpoint_path: Union[str, Path], **overrides: Any) -> CLIP4STR:
    """The plain CLIP4STR module of a checkpoint (a Lightning `.ckpt`, ours or the original's, or a
    state dict in the original's key layout), for inference. No CLIP weight file is needed."""
    path = Path(checkpoint_path)
    state_dict, config = read_model_checkpoint(path, overrides)
    with torch.device("meta"):
        model = build_model(config)
    assign_weights(model, state_dict, path)
    model.to("cpu")
    return_freed_memory()
    return model


_VAL_ACCURACY = re.compile(r"val_accuracy=(\d+(?:\.\d+)?)")


def best_checkpoint(folder: Path) -> Path:
    """The readable checkpoint with the highest `val_accuracy=` in its name, in `folder` or `folder/checkpoints`
    (the first in name order on ties). Unreadable ones (a write cut short) are skipped with a warning naming them."""
    candidates = sorted(folder.glob("*.ckpt")) + sorted(folder.glob("checkpoints/*.ckpt"))
    scored = [(float(m.group(1)), path) for path in candidates if (m := _VAL_ACCURACY.search(path.name))]
    if not scored:
        raise FileNotFoundError(f"no checkpoint named with val_accuracy=... in {folder} or {folder / 'checkpoints'}")
    unreadable = []
    for _, path in sorted(scored, key=lambda item: -item[0]):
        try:
            safe_load(path, mmap=True)
        except InvalidCheckpointError as err:
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            unreadable.append(path.name)
            continue
        return path
    raise InvalidCheckpointError(f"no readable checkpoint in {folder}: {', '.join(unreadable)} cannot be read")
