"""The Lightning system that trains CLIP4STR with permutation language modelling."""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from strhub.models.base import PLMSystem, split_decay
from strhub.models.clip import arch_to_config
from strhub.models.clip4str.model import CLIP4STR
from strhub.models.decoder_layers import cloze_mask
from strhub.models.plm import head_cross_entropy
from strhub.models.towers import create_text_tower


class CLIP4STRSystem(PLMSystem):
    """CLIP4STR training and evaluation. The CLIP backbone comes from `clip_pretrained` (a local
    OpenAI `.pt` or OpenCLIP `.bin` file) or, when that is None, is built with random weights from
    `clip_arch` (an open_clip architecture name, or a dict with `embed_dim`, `vision_cfg`, `text_cfg`).
    `text_tower` (None: CLIP's own) names a Hugging Face text tower (`strhub.models.towers.hf`); the
    hyper-parameters keep what rebuilds it without its folder."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, batch_size: int, lr: float,
                 warmup_pct: float, weight_decay: float, img_size: Sequence[int], dec_num_heads: int,
                 dec_mlp_ratio: int, dec_depth: int, perm_num: int, perm_forward: bool, perm_mirrored: bool,
                 decode_ar: bool, refine_iters: int, dropout: float, clip_pretrained: Optional[str],
                 clip_arch: Union[str, Dict[str, Any], None], context_length: int, use_language_model: bool,
                 image_detach: bool, cross_gt_context: bool, cross_cloze_mask: bool, cross_loss_w: float,
                 cross_token_embeding: bool, image_freeze_nlayer: int, text_freeze_nlayer: int,
                 use_share_dim: bool, clip_cls_eot_feature: bool, coef_lr: float, coef_wd: float,
                 find_unused_parameters: bool = True, compile_encoder: bool = False,
                 text_tower: Optional[Dict[str, Any]] = None, grad_checkpointing: bool = False,
                 grad_checkpointing_decoder: bool = False, compile_train_step: bool = False, **kwargs: Any) -> None:
        super().__init__(charset_train, charset_test, batch_size, lr, warmup_pct, weight_decay, perm_num,
                         perm_forward, perm_mirrored)
        tower, arch = create_text_tower(clip_pretrained, clip_arch, img_size, text_tower, context_length)
        self.save_hyperparameters()
        self.hparams["clip_arch"] = arch_to_config(arch)
        self.hparams["text_tower"] = tower.settings()
        self.model = CLIP4STR(tower, charset_train, charset_test, max_label_length,
                              dec_num_heads, dec_mlp_ratio, dec_depth, dropout, decode_ar, refine_iters,
                              use_language_model, image_detach, use_share_dim, clip_cls_eot_feature,
                              cross_token_embeding, image_freeze_nlayer, text_freeze_nlayer)
        if compile_encoder:
            self.model.compile_image_encoder()
        self.set_training_options(grad_checkpointing, grad_checkpointing_decoder, compile_train_step)
        self.cross_gt_context = cross_gt_context
        self.cross_cloze_mask = cross_cloze_mask
        self.cross_loss_w = cross_loss_w
        self.coef_lr = coef_lr
        self.coef_wd = coef_wd
        self.find_unused_parameters = find_unused_parameters

    def summed_loss(self, images: Tensor, tgt_in: Tensor, targets: Tensor, content_masks: Tensor,
                    query_masks: Tensor, padding: Tensor) -> Tensor:
        """The visual branch's summed cross-entropy, plus the cross branch's weighted by `cross_loss_w`. The
        captions and the cross branch's context read the visual predictions (every position's argmax class),
        which get no gradient from them."""
        model = self.model
        memory = model.encode(images)
        visual_kv = model.visual_decoder.memory_kv(memory)
        visual = torch.stack([model.visual_decoder.features(tgt_in, visual_kv, None, query_masks[k], content_masks[k],
                                                            padding) for k in range(len(query_masks))])
        loss, visual_ids = head_cross_entropy(model.visual_decoder.head, visual, targets, self.pad_id,
                                              all_ids=model.use_language_model)
        if model.use_language_model:
            cross = self._cross_features(list(visual_ids), memory, tgt_in, content_masks, query_masks, padding)
            loss = loss + self.cross_loss_w * head_cross_entropy(model.cross_decoder.head, cross, targets,
                                                                 self.pad_id)[0]
        return loss

    def _cross_features(self, visual_ids: List[Tensor], memory: Tensor, tgt_in: Tensor, content_masks: Tensor,
                        query_masks: Tensor, padding: Tensor) -> Tensor:
        """The cross branch's head inputs (P, N, T+1, D) for every permutation, given the visual branch's argmax
        classes (N, T+1) of each. The image part of its memory is projected once, and the captions of all
        permutations are encoded in one call."""
        model = self.model
        decoder = model.cross_decoder
        image_kv = model.cross_image_kv(memory)
        text_kvs = model.caption_kv(visual_ids)
        cloze = cloze_mask(tgt_in.shape[1], tgt_in.device)
        features = []
        for k, text_kv in enumerate(text_kvs):
            memory_kv = model.join_kv(image_kv, text_kv)
            context = tgt_in if self.cross_gt_context else torch.cat([tgt_in[:, :1], visual_ids[k][:, :-1]], dim=1)
            query_mask, content_mask = (cloze, cloze) if self.cross_cloze_mask else (query_masks[k], content_masks[k])
            features.append(decoder.features(context, memory_kv, None, query_mask, content_mask, padding))
        return torch.stack(features)

    def param_groups(self) -> List[List[Tensor]]:
        """Trainable parameters in the optimizer's four groups: CLIP without and with weight decay,
        then the decoders without and with it."""
        decoders = [(name, param) for name, param in self.model.named_parameters()
                    if not name.startswith("clip_model.")]
        return [*split_decay(list(self.model.clip_model.named_parameters())), *split_decay(decoders)]

    def configure_optimizers(self) -> Dict[str, Any]:
        """CLIP at the base learning rate scaled linearly by the effective batch over 512, the decoders
        at `coef_lr` times that."""
        groups = self.param_groups()
        return self.two_rate_adamw(self.linear_lr(), groups[:2], groups[2:], self.coef_lr, self.coef_wd)
