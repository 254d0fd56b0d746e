"""The Lightning system that trains STR-Adapter with permutation language modelling."""
from typing import Any, Dict, List, Optional, Sequence, Union

from torch import Tensor

from strhub.models.base import PLMSystem, split_decay
from strhub.models.clip import arch_to_config, create_clip
from strhub.models.str_adapter.adapters import ENCODER_RATE_ADAPTERS
from strhub.models.str_adapter.model import STRAdapter


class STRAdapterSystem(PLMSystem):
    """STR-Adapter training and evaluation. CLIP comes from `clip_pretrained` (a local OpenAI `.pt`
    or OpenCLIP `.bin` file) or, when that is None, is built with random weights from `clip_arch`;
    it stays frozen, only the adapter and the decoder train."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, batch_size: int, lr: float,
                 warmup_pct: float, weight_decay: float, img_size: Sequence[int], dec_num_heads: int,
                 dec_mlp_ratio: int, dec_depth: int, perm_num: int, perm_forward: bool, perm_mirrored: bool,
                 decode_ar: bool, refine_iters: int, dropout: float, clip_pretrained: Optional[str],
                 clip_arch: Union[str, Dict[str, Any], None], adapter_type: str, block_ids: Sequence[int],
                 prune_reduction: int, coef_lr: float, coef_wd: float, find_unused_parameters: bool = True,
                 grad_checkpointing: bool = False, grad_checkpointing_decoder: bool = False,
                 compile_train_step: bool = False, **kwargs: Any) -> None:
        super().__init__(charset_train, charset_test, batch_size, lr, warmup_pct, weight_decay, perm_num,
                         perm_forward, perm_mirrored)
        clip_model, arch = create_clip(clip_pretrained, clip_arch, img_size)
        self.save_hyperparameters()
        self.hparams["clip_arch"] = arch_to_config(arch)
        self.model = STRAdapter(clip_model, charset_train, charset_test, max_label_length, adapter_type,
                                list(block_ids), prune_reduction, dec_num_heads, dec_mlp_ratio, dec_depth, dropout,
                                decode_ar, refine_iters)
        self.set_training_options(grad_checkpointing, grad_checkpointing_decoder, compile_train_step)
        self.adapter_type = adapter_type
        self.coef_lr = coef_lr
        self.coef_wd = coef_wd
        self.find_unused_parameters = find_unused_parameters

    def param_groups(self) -> List[List[Tensor]]:
        """The optimizer's four groups: the encoder's (the ladder adapters) without and with weight
        decay, then the decoder's (with the other adapters) without and with it. CLIP is in none."""
        named = [(name, param) for name, param in self.model.named_parameters() if not name.startswith("clip_model.")]
        encoder_rate = self.adapter_type in ENCODER_RATE_ADAPTERS
        encoder = [(name, param) for name, param in named if encoder_rate and name.startswith("adapter.")]
        decoder = [(name, param) for name, param in named if not (encoder_rate and name.startswith("adapter."))]
        return [*split_decay(encoder), *split_decay(decoder)]

    def configure_optimizers(self) -> Dict[str, Any]:
        """The encoder groups at PARSeq's square-root learning-rate rule, the decoder's `coef_lr` times higher."""
        groups = self.param_groups()
        return self.two_rate_adamw(self.sqrt_lr(), groups[:2], groups[2:], self.coef_lr, self.coef_wd)
