"""A Hugging Face text tower for CLIP4STR's cross-modal branch, for captions in other languages: open_clip's
`CustomTextCLIP`, whose text tower is open_clip's `HFTextEncoder` around a BERT-like encoder (BERT,
RoBERTa, XLM-RoBERTa: e.g. `xlm-roberta-base-ViT-B-32`), beside open_clip's image tower.

Nothing is downloaded: the tower's config, tokenizer and (optionally) weights come from a local folder in
Hugging Face's `save_pretrained` layout, and the hyper-parameters keep the config and the tokenizer, so that
a checkpoint loads without the folder. The cross branch's text memory is the tower's last hidden state at
every token position, padding included (as in the English path), projected by the tower's own projection
to the joint width. The tower is bidirectional: no causal mask, and its attention mask keeps the padding
out of every position's features.

Importing this module imports transformers (the `multilingual` extra).
"""
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from open_clip.model import CLIPTextCfg, CustomTextCLIP
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.initialization import no_init_weights

from strhub.models.clip import (
    ClipArch,
    arch_from_name,
    arch_from_state_dict,
    is_hf_arch,
    read_clip_state_dict,
    vision_config,
)
from strhub.models.clip_blocks import run_blocks_as_ours
from strhub.models.state_dicts import merge_settings
from strhub.models.towers.base import TextTower

# The files of a save_pretrained folder that hold weights.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
FOLDER_KEYS = ("hf_path",)
STORED_KEYS = ("hf_config", "tokenizer", "pad_token")


class HFTextTower(TextTower):
    """A Hugging Face encoder as CLIP4STR's text tower. Captions are tokenised by the tower's own tokenizer
    (its special tokens around them), truncated and padded to `context_length` tokens."""

    clip: CustomTextCLIP

    def __init__(self, clip: CustomTextCLIP, tokenizer: Tokenizer, pad_token: str, context_length: int) -> None:
        super().__init__(clip, context_length)
        transformer = clip.text.transformer
        if not isinstance(getattr(transformer, "embeddings", None), nn.Module) or not isinstance(
                getattr(getattr(transformer, "encoder", None), "layer", None), nn.ModuleList):
            raise ValueError(f"the Hugging Face text tower {type(transformer).__name__} is not a BERT-like encoder "
                             f"(embeddings, encoder.layer: BERT, RoBERTa, XLM-RoBERTa), the kind CLIP4STR supports")
        self.pad_token = pad_token
        self.pad_id = tokenizer.token_to_id(pad_token)
        if self.pad_id is None:
            raise ValueError(f"the text tower's tokenizer has no padding token {pad_token!r} in its vocabulary")
        if self.pad_id != clip.text.config.pad_token_id:
            raise ValueError(f"the text tower's tokenizer pads with id {self.pad_id} ({pad_token!r}) but its model "
                             f"config has pad_token_id={clip.text.config.pad_token_id}")
        self.tokenizer_json = tokenizer.to_str()
        self.caption_tokenizer = tokenizer
        tokenizer.enable_truncation(context_length)
        tokenizer.enable_padding(length=context_length, pad_id=self.pad_id, pad_token=pad_token)

    @property
    def embed_dim(self) -> int:
        return self.clip.text.output_dim

    @property
    def blocks(self) -> nn.ModuleList:
        return self.clip.text.transformer.encoder.layer

    @property
    def module(self) -> nn.Module:
        return self.clip.text

    def tokenize(self, captions: List[str], device: torch.device) -> Tensor:
        ids = {caption: self.caption_tokenizer.encode(caption).ids for caption in set(captions)}
        return torch.tensor([ids[caption] for caption in captions], dtype=torch.long, device=device)

    def token_labels(self, captions: List[str]) -> List[Tuple[str, ...]]:
        """The tokenizer's tokens, special ones included."""
        return [tuple(token if mask else "" for token, mask in zip(encoding.tokens, encoding.attention_mask))
                for encoding in self.caption_tokenizer.encode_batch(captions)]

    def _encode(self, token_ids: Tensor) -> Tuple[Any, Tensor]:
        """The transformer's output and the attention mask (1 on tokens, 0 on padding)."""
        mask = (token_ids != self.pad_id).long()
        return self.clip.text.transformer(input_ids=token_ids, attention_mask=mask), mask

    def token_features(self, token_ids: Tensor) -> Tensor:
        return self.clip.text.proj(self._encode(token_ids)[0].last_hidden_state)

    def pooled_features(self, token_ids: Tensor) -> Tensor:
        """The feature of open_clip's pooler (the tower's CLIP text embedding)."""
        output, mask = self._encode(token_ids)
        return self.clip.text.proj(self.clip.text.pooler(output, mask)).unsqueeze(1)

    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        return self.clip.text.proj(self.clip.text.transformer.get_input_embeddings()(token_ids))

    def embeddings(self) -> List[nn.Module]:
        return [self.clip.text.transformer.embeddings]

    def head(self) -> List[nn.Module]:
        pooler = getattr(self.clip.text.transformer, "pooler", None)
        return [self.clip.text.proj, *([pooler] if pooler is not None else [])]

    def settings(self) -> Dict[str, Any]:
        """The Hugging Face config (a dict), the tokenizer (its `tokenizer.json`) and its padding token."""
        return {"hf_config": json.loads(self.clip.text.config.to_json_string(use_diff=False)),
                "tokenizer": self.tokenizer_json, "pad_token": self.pad_token}


def create_hf_tower(clip_pretrained: Optional[str], clip_arch: Union[str, ClipArch, None],
                    image_size: Optional[Sequence[int]], text_tower: Mapping[str, Any],
                    context_length: int) -> Tuple[HFTextTower, ClipArch]:
    """open_clip's CustomTextCLIP of `clip_arch` (an open_clip name such as `xlm-roberta-base-ViT-B-32`, or a
    dict whose `text_cfg` has `hf_pooler_type` and `hf_proj_type`), and its architecture. Its text tower is
    `text_tower`: `{hf_path: folder}`, a local save_pretrained folder (config, fast tokenizer, weights when it has
    them), or what a checkpoint's hyper-parameters keep (`HFTextTower.settings`). The weights of `clip_pretrained`
    (an open_clip file of the whole CLIP), when given, replace every other."""
    arch = arch_from_name(clip_arch, image_size) if isinstance(clip_arch, str) else clip_arch
    if not is_hf_arch(arch):
        raise ValueError(f"model.text_tower is set but model.clip_arch {clip_arch!r} has CLIP's own text tower: "
                         f"name an open_clip architecture with a Hugging Face one (e.g. xlm-roberta-base-ViT-B-32) or "
                         f"give text_cfg: {{hf_pooler_type, hf_proj_type}}")
    state_dict = read_clip_state_dict(clip_pretrained) if clip_pretrained else None
    if state_dict is not None:
        arch = merge_settings(arch, arch_from_state_dict(state_dict, image_size))
    if set(text_tower) == set(FOLDER_KEYS):
        folder = Path(text_tower["hf_path"])
        hf_config, tokenizer, pad_token = read_folder(folder)
        weights = folder if state_dict is None and any((folder / name).is_file() for name in WEIGHT_FILES) else None
    elif set(text_tower) == set(STORED_KEYS):
        hf_config = AutoConfig.for_model(**text_tower["hf_config"])
        tokenizer, pad_token, weights = Tokenizer.from_str(text_tower["tokenizer"]), text_tower["pad_token"], None
    else:
        raise ValueError(f"model.text_tower takes {{{', '.join(FOLDER_KEYS)}}} (a local Hugging Face folder) or, in a "
                         f"checkpoint, {{{', '.join(STORED_KEYS)}}}; got {{{', '.join(text_tower)}}}")
    clip = build_hf_clip(arch, hf_config, weights)
    if state_dict is not None:
        load_clip_weights(clip, state_dict, clip_pretrained)
    return HFTextTower(clip, tokenizer, pad_token, context_length), arch


def read_folder(folder: Path) -> Tuple[PretrainedConfig, Tokenizer, str]:
    """The config, the fast tokenizer and its padding token of a local save_pretrained folder."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.text_tower.hf_path: {folder} is not a folder with a Hugging Face config.json "
                                f"(nothing is downloaded: save the model and its tokenizer there with save_pretrained)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tokenizer.is_fast or tokenizer.pad_token is None:
        raise ValueError(f"model.text_tower.hf_path: the tokenizer of {folder} must be a fast one (tokenizer.json) "
                         f"with a padding token")
    return config, Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), tokenizer.pad_token


def build_hf_clip(arch: ClipArch, hf_config: PretrainedConfig, weights: Optional[Path]) -> CustomTextCLIP:
    """CustomTextCLIP as open_clip builds it, in float32 (whatever the folder's dtype), its text tower with the
    weights of the folder `weights` or random ones (open_clip builds the tower from a folder: `hf_config` is
    written to a temporary one)."""
    text = arch["text_cfg"]
    defaults = CLIPTextCfg()
    with tempfile.TemporaryDirectory() as config_folder, _buffers_with_values():
        if weights is None:
            hf_config.save_pretrained(config_folder)
        text_cfg = CLIPTextCfg(hf_model_name=str(weights or config_folder), hf_model_pretrained=weights is not None,
                               hf_pooler_type=text.get("hf_pooler_type", defaults.hf_pooler_type),
                               hf_proj_type=text.get("hf_proj_type", defaults.hf_proj_type))
        clip = CustomTextCLIP(arch["embed_dim"], vision_config(arch), text_cfg,
                              quick_gelu=arch.get("quick_gelu", False))
    run_blocks_as_ours(clip.visual.transformer)
    return clip.float()


@contextlib.contextmanager
def _buffers_with_values() -> Iterator[None]:
    """On the meta device (a model built for a checkpoint's weights), builds on the CPU with the weights left
    uninitialised instead: Hugging Face models hold buffers that no checkpoint has (position ids), which the meta
    device would leave without values."""
    if torch.get_default_device().type != "meta":
        yield
        return
    with torch.device("cpu"), no_init_weights():
        yield


def load_clip_weights(clip: CustomTextCLIP, state_dict: Mapping[str, Tensor], path: Union[str, Path]) -> None:
    """Loads an open_clip state dict of the whole CLIP (buffers that the model does not save, such as the
    position ids older transformers saved, are left out)."""
    unsaved = {name for name, _ in clip.named_buffers()} - set(clip.state_dict())
    try:
        clip.load_state_dict({k: v.float() for k, v in state_dict.items() if k not in unsaved}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the CLIP of model.clip_arch and model.text_tower: {err}") from err
