"""The Lightning system that trains PARSeq with permutation language modelling."""
from typing import Any, Dict, Sequence

from timm.optim import create_optimizer_v2
from torch.optim.lr_scheduler import OneCycleLR

from strhub.models.base import PLMSystem
from strhub.models.parseq.model import PARSeq


class PARSeqSystem(PLMSystem):
    """PARSeq training and evaluation (the baseline of CLIP4STR's paper, and baudm/parseq's model)."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, batch_size: int, lr: float,
                 warmup_pct: float, weight_decay: float, img_size: Sequence[int], patch_size: Sequence[int],
                 embed_dim: int, enc_num_heads: int, enc_mlp_ratio: float, enc_depth: int, dec_num_heads: int,
                 dec_mlp_ratio: int, dec_depth: int, perm_num: int, perm_forward: bool, perm_mirrored: bool,
                 decode_ar: bool, refine_iters: int, dropout: float, find_unused_parameters: bool = False,
                 grad_checkpointing: bool = False, grad_checkpointing_decoder: bool = False,
                 compile_train_step: bool = False, **kwargs: Any) -> None:
        super().__init__(charset_train, charset_test, batch_size, lr, warmup_pct, weight_decay, perm_num,
                         perm_forward, perm_mirrored)
        self.save_hyperparameters()
        self.model = PARSeq(charset_train, charset_test, max_label_length, img_size, patch_size, embed_dim,
                            enc_num_heads, enc_mlp_ratio, enc_depth, dec_num_heads, dec_mlp_ratio, dec_depth, dropout,
                            decode_ar, refine_iters)
        self.set_training_options(grad_checkpointing, grad_checkpointing_decoder, compile_train_step)
        self.find_unused_parameters = find_unused_parameters

    def configure_optimizers(self) -> Dict[str, Any]:
        """timm's AdamW (no decay for 1-D parameters, biases and `no_weight_decay`), PARSeq's square-root
        learning-rate rule, one OneCycle schedule."""
        lr = self.sqrt_lr()
        optimizer = create_optimizer_v2(self.model, "adamw", lr, self.weight_decay)
        scheduler = OneCycleLR(optimizer, lr, self.trainer.estimated_stepping_batches, pct_start=self.warmup_pct,
                               cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
