"""The Lightning system that trains CLIP4STR with permutation language modelling."""
import math
from itertools import permutations
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import OneCycleLR

from strhub.models.base import CrossEntropySystem
from strhub.models.clip4str.clip import arch_to_config, create_clip
from strhub.models.clip4str.model import CLIP4STR, cloze_mask
from strhub.models.decoder import Decoder

NO_DECAY_MARKERS = ("bn", "ln", "bias", "logit_scale", "pos_queries", "text_embed")


def permutation_masks(perms: Tensor) -> Tuple[Tensor, Tensor]:
    """Content (P, T+1, T+1) and query (P, T+1, T+1) additive masks for permutations (P, T+2) of
    the positions BOS, characters, EOS: a position sees those that come no later in its permutation,
    and a query never sees the position it predicts."""
    num, size = perms.shape
    order = torch.arange(size, device=perms.device).expand(num, -1)
    rank = torch.empty_like(perms).scatter_(1, perms, order)
    hidden = rank[:, None, :] > rank[:, :, None]
    zeros = torch.zeros(num, size, size, device=perms.device)
    content = zeros.masked_fill(hidden, float("-inf"))[:, :-1, :-1]
    eye = torch.eye(size, dtype=torch.bool, device=perms.device)
    query = zeros.masked_fill(hidden | eye, float("-inf"))[:, 1:, :-1]
    return content, query


class CLIP4STRSystem(CrossEntropySystem):
    """CLIP4STR training and evaluation. The CLIP backbone comes from `clip_pretrained` (a local
    OpenAI `.pt` or OpenCLIP `.bin` file) or, when that is None, is built with random weights from
    `clip_arch` (an open_clip architecture name, or a dict with `embed_dim`, `vision_cfg`, `text_cfg`)."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, batch_size: int, lr: float,
                 warmup_pct: float, weight_decay: float, img_size: Sequence[int], dec_num_heads: int,
                 dec_mlp_ratio: int, dec_depth: int, perm_num: int, perm_forward: bool, perm_mirrored: bool,
                 decode_ar: bool, refine_iters: int, dropout: float, clip_pretrained: Optional[str],
                 clip_arch: Union[str, Dict[str, Any], None], context_length: int, use_language_model: bool,
                 image_detach: bool, cross_gt_context: bool, cross_cloze_mask: bool, cross_loss_w: float,
                 cross_token_embeding: bool, image_freeze_nlayer: int, text_freeze_nlayer: int,
                 use_share_dim: bool, clip_cls_eot_feature: bool, coef_lr: float, coef_wd: float,
                 find_unused_parameters: bool = True, compile_encoder: bool = False, **kwargs: Any) -> None:
        super().__init__(charset_train, charset_test, batch_size, lr, warmup_pct, weight_decay)
        if perm_mirrored and perm_num % 2:
            raise ValueError(f"perm_num must be even when perm_mirrored is set, got {perm_num}")
        clip_model, arch = create_clip(clip_pretrained, clip_arch, img_size)
        self.save_hyperparameters()
        self.hparams["clip_arch"] = arch_to_config(arch)
        self.model = CLIP4STR(clip_model, charset_train, charset_test, max_label_length, context_length,
                              dec_num_heads, dec_mlp_ratio, dec_depth, dropout, decode_ar, refine_iters,
                              use_language_model, image_detach, use_share_dim, clip_cls_eot_feature,
                              cross_token_embeding, image_freeze_nlayer, text_freeze_nlayer)
        if compile_encoder:
            self.model.compile_image_encoder()
        self.max_label_length = max_label_length
        self.max_gen_perms = perm_num // 2 if perm_mirrored else perm_num
        self.perm_forward = perm_forward
        self.perm_mirrored = perm_mirrored
        self.cross_gt_context = cross_gt_context
        self.cross_cloze_mask = cross_cloze_mask
        self.cross_loss_w = cross_loss_w
        self.coef_lr = coef_lr
        self.coef_wd = coef_wd
        self.find_unused_parameters = find_unused_parameters

    def forward(self, images: Tensor, max_length: Optional[int] = None) -> Tensor:
        return self.model(images, max_length)

    def gen_tgt_perms(self, tgt: Tensor) -> Tensor:
        """Permutations (P, T+2) shared by the batch, BOS first and EOS last: the forward order, then
        (if mirrored) its reverse with EOS given the null context, then sampled orders and their
        mirrors. Short labels sample from the full pool of permutations without repeats."""
        num_chars = tgt.shape[1] - 2
        device = tgt.device
        if num_chars == 1:
            return torch.arange(3, device=device).unsqueeze(0)
        perms = [torch.arange(num_chars, device=device)] if self.perm_forward else []
        max_perms = math.factorial(num_chars) // (2 if self.perm_mirrored else 1)
        num_gen = min(self.max_gen_perms, max_perms)
        if num_chars < 5:
            if num_chars == 4 and self.perm_mirrored:
                selector = [0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21]
            else:
                selector = list(range(max_perms))
            pool = torch.as_tensor(list(permutations(range(num_chars))), device=device)[selector]
            if self.perm_forward:
                pool = pool[1:]
            picks = torch.randperm(len(pool))[:num_gen - len(perms)]
            perms = torch.cat([torch.stack(perms), pool[picks.to(device)]]) if perms else pool[picks.to(device)]
        else:
            perms += [torch.randperm(num_chars, device=device) for _ in range(num_gen - len(perms))]
            perms = torch.stack(perms)
        if self.perm_mirrored:
            perms = torch.stack([perms, perms.flip(-1)], dim=1).flatten(end_dim=1)
        bos = perms.new_zeros(len(perms), 1)
        eos = perms.new_full((len(perms), 1), num_chars + 1)
        perms = torch.cat([bos, perms + 1, eos], dim=1)
        if len(perms) > 1:
            perms[1, 1:] = torch.arange(num_chars + 1, 0, -1, device=device)
        return perms

    def training_step(self, batch: Tuple[Tensor, List[str]], batch_idx: int) -> Tensor:
        """The permutation language modelling loss of both branches. The heads run with gradients on the
        rows that have a target only: padded rows add nothing to the loss, and with a large charset the
        heads' products and the softmax over their logits cost most of the step."""
        images, labels = batch
        model = self.model
        tgt = self.tokenizer.encode(labels, self.device)
        memory = model.encode(images)
        perms = self.gen_tgt_perms(tgt)
        content_masks, query_masks = permutation_masks(perms)
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        padding = (tgt_in == self.pad_id) | (tgt_in == self.eos_id)
        no_eos_out = torch.where(tgt_out == self.eos_id, self.pad_id, tgt_out)

        visual_kv = model.visual_decoder.memory_kv(memory)
        visual_features = [model.visual_decoder.features(tgt_in, visual_kv, None, query_masks[k], content_masks[k],
                                                         padding) for k in range(len(perms))]
        with torch.no_grad():  # the captions and the cross branch's context read the visual predictions
            visual_logits = [model.visual_decoder.head(features) for features in visual_features]
        cross_features = self._cross_features(visual_logits, memory, tgt_in, content_masks, query_masks, padding)

        loss = memory.new_zeros(())
        numel = tgt.new_zeros(())
        for k in range(len(perms)):
            targets = tgt_out if k < 2 else no_eos_out
            rows = targets != self.pad_id
            loss = loss + self._ce_sum(model.visual_decoder, visual_features[k][rows], targets[rows])
            if cross_features:
                loss = loss + self.cross_loss_w * self._ce_sum(model.cross_decoder, cross_features[k][rows],
                                                               targets[rows])
            numel = numel + rows.sum()
        loss = loss / numel
        self.log("loss", loss, prog_bar=True)
        return loss

    @staticmethod
    def _ce_sum(decoder: Decoder, features: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(decoder.head(features), targets, reduction="sum")

    def _cross_features(self, visual_logits: List[Tensor], memory: Tensor, tgt_in: Tensor, content_masks: Tensor,
                        query_masks: Tensor, padding: Tensor) -> List[Tensor]:
        """The cross branch's head inputs for every permutation. The image part of its memory is
        projected once, and the captions of all permutations are encoded in one call."""
        model = self.model
        if not model.use_language_model:
            return []
        decoder = model.cross_decoder
        image_kv = model.cross_image_kv(memory)
        text_kvs = model.caption_kv(visual_logits)
        cloze = cloze_mask(tgt_in.shape[1], tgt_in.device)
        features = []
        for k, text_kv in enumerate(text_kvs):
            memory_kv = model.join_kv(image_kv, text_kv)
            context = tgt_in if self.cross_gt_context else torch.cat(
                [tgt_in[:, :1], visual_logits[k][:, :-1].argmax(-1)], dim=1)
            query_mask, content_mask = (cloze, cloze) if self.cross_cloze_mask else (query_masks[k], content_masks[k])
            features.append(decoder.features(context, memory_kv, None, query_mask, content_mask, padding))
        return features

    def param_groups(self) -> List[List[Tensor]]:
        """Trainable parameters in the optimizer's four groups: CLIP without and with weight decay,
        then the decoders without and with it. Gains, biases, `logit_scale`, position queries and
        character embeddings get no decay."""
        groups: List[List[Tensor]] = [[], [], [], []]
        for offset, module in ((0, self.model.clip_model), (2, self.model)):
            for name, param in module.named_parameters():
                if not param.requires_grad or (offset and name.startswith("clip_model.")):
                    continue
                decay = param.ndim >= 2 and not any(marker in name for marker in NO_DECAY_MARKERS)
                groups[offset + decay].append(param)
        return groups

    def configure_optimizers(self) -> Dict[str, Any]:
        """AdamW over `param_groups`; the learning rate scales linearly with the effective batch over
        512, and the decoders' is `coef_lr` times larger. OneCycle schedule stepped every step."""
        trainer = self.trainer
        lr = self.lr * trainer.accumulate_grad_batches * trainer.world_size * self.batch_size / 512
        decoder_lr = lr * self.coef_lr
        clip_plain, clip_decay, decoder_plain, decoder_decay = self.param_groups()
        optimizer = torch.optim.AdamW([
            {"params": clip_plain, "weight_decay": 0.0, "lr": lr},
            {"params": clip_decay, "weight_decay": self.weight_decay, "lr": lr},
            {"params": decoder_plain, "weight_decay": 0.0, "lr": decoder_lr},
            {"params": decoder_decay, "weight_decay": self.weight_decay * self.coef_wd, "lr": decoder_lr},
        ], lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=self.device.type in ("cuda", "cpu"))
        scheduler = OneCycleLR(optimizer, [lr, lr, decoder_lr, decoder_lr], trainer.estimated_stepping_batches,
                               pct_start=self.warmup_pct, cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
