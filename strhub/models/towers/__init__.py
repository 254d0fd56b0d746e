"""The text towers of CLIP4STR's cross-modal branch, behind one small interface.

The branch encodes the visual branch's prediction (a caption) with CLIP's text tower and reads every
token position of the result. The tower is CLIP's own (OpenAI layout, English BPE, causal: the default,
as the original) or, for other languages, a Hugging Face model beside open_clip's image tower
(`strhub.models.towers.hf`, chosen with `model.text_tower`). Either gives the joint width, the blocks
that `text_freeze_nlayer` counts, the caption tokenizer, and the features of every token position.
"""
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from strhub.models.clip import ClipArch, create_clip, is_hf_arch
from strhub.models.towers.base import TextTower
from strhub.models.towers.clip import CaptionTokenizer, CLIPTextTower

__all__ = ["CaptionTokenizer", "CLIPTextTower", "TextTower", "create_text_tower"]


def create_text_tower(clip_pretrained: Optional[str], clip_arch: Union[str, ClipArch, None],
                      image_size: Optional[Sequence[int]], text_tower: Optional[Mapping[str, Any]],
                      context_length: int) -> Tuple[TextTower, ClipArch]:
    """The CLIP of `clip_pretrained` / `clip_arch` (see `strhub.models.clip.create_clip`) behind its text
    tower, and its architecture. With `text_tower` set, the text tower is a Hugging Face model
    (`strhub.models.towers.hf`, imported only then)."""
    if text_tower:
        from strhub.models.towers.hf import create_hf_tower

        return create_hf_tower(clip_pretrained, clip_arch, image_size, text_tower, context_length)
    if is_hf_arch(clip_arch):
        name = repr(clip_arch) if isinstance(clip_arch, str) else "(with text_cfg.hf_proj_type)"
        raise ValueError(f"model.clip_arch {name} has a Hugging Face text tower: set model.text_tower "
                         f"(hf_path: a local folder with its config and tokenizer, save_pretrained layout)")
    clip, arch = create_clip(clip_pretrained, clip_arch, image_size)
    return CLIPTextTower(clip, context_length), arch
