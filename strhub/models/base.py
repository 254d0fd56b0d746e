"""The Lightning systems' shared parts: evaluation (metrics per batch and their aggregation) and
permutation-language-model training of a plain model, with the optimizer recipes of the families."""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from nltk import edit_distance
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.plugins.precision.amp import _optimizer_handles_unscaling
from pytorch_lightning.utilities.enums import GradClipAlgorithmType
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.optim.lr_scheduler import OneCycleLR

from strhub.models.plm import generate_permutations, head_cross_entropy, permutation_masks, permutation_targets
from strhub.models.recognizer import Recognizer
from strhub.tokenizer import CharsetAdapter, Tokenizer

# A parameter whose name holds one of these (or that has fewer than two dimensions) gets no weight decay.
NO_DECAY_MARKERS = ("bn", "ln", "bias", "logit_scale", "pos_queries", "text_embed")


@dataclass
class BatchResult:
    num_samples: int
    correct: int
    ned: float
    confidence: float
    label_length: int
    loss: Tensor
    loss_numel: int
    predictions: List[str] = field(default_factory=list)  # per sample, mapped onto the test charset
    confidences: List[float] = field(default_factory=list)


class CrossEntropySystem(pl.LightningModule):
    """A Lightning system whose model predicts characters with a cross-entropy head. Subclasses
    provide `forward(images, max_length=None)`."""

    def __init__(self, charset_train: str, charset_test: str, batch_size: int, lr: float, warmup_pct: float,
                 weight_decay: float) -> None:
        super().__init__()
        self.tokenizer = Tokenizer(charset_train)
        self.charset_adapter = CharsetAdapter(charset_test)
        self.batch_size = batch_size
        self.lr = lr
        self.warmup_pct = warmup_pct
        self.weight_decay = weight_decay
        self.validation_results: List[BatchResult] = []

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def forward_logits_loss(self, images: Tensor, labels: List[str]) -> Tuple[Tensor, Tensor, int]:
        """Logits decoded for as many steps as the longest label needs, and their loss."""
        targets = self.tokenizer.encode(labels, self.device)[:, 1:]
        logits = self.forward(images, targets.shape[1] - 1)
        loss = F.cross_entropy(logits.flatten(end_dim=1), targets.flatten(), ignore_index=self.pad_id)
        return logits, loss, int((targets != self.pad_id).sum())

    def evaluate(self, batch: Tuple[Tensor, List[str]], with_loss: bool) -> BatchResult:
        """Accuracy, normalised edit distance, confidence and predicted length over a batch, with the
        predictions mapped onto the test charset (labels are expected to be mapped already)."""
        images, labels = batch
        if with_loss:
            logits, loss, loss_numel = self.forward_logits_loss(images, labels)
        else:
            logits, loss, loss_numel = self.forward(images), None, 0
        predictions, confidences = self.tokenizer.read(logits.softmax(-1))
        correct = ned = label_length = 0
        adapted = []
        for prediction, label in zip(predictions, labels):
            prediction = self.charset_adapter(prediction)
            adapted.append(prediction)
            ned += edit_distance(prediction, label) / max(len(prediction), len(label))
            correct += prediction == label
            label_length += len(prediction)
        return BatchResult(len(labels), correct, ned, sum(confidences), label_length, loss, loss_numel, adapted,
                           confidences)

    def validation_step(self, batch: Optional[Tuple[Tensor, List[str]]], batch_idx: int) -> Optional[BatchResult]:
        if batch is None:  # every image of the batch failed to decode
            return None
        result = self.evaluate(batch, with_loss=True)
        self.validation_results.append(result)
        return result

    def test_step(self, batch: Tuple[Tensor, List[str]], batch_idx: int) -> BatchResult:
        return self.evaluate(batch, with_loss=False)

    @staticmethod
    def aggregate(results: List[BatchResult]) -> Tuple[float, float, Optional[float]]:
        """Word accuracy, 1 - NED and the loss over the results."""
        total = sum(r.num_samples for r in results)
        accuracy = sum(r.correct for r in results) / total
        ned = 1 - sum(r.ned for r in results) / total
        numel = sum(r.loss_numel for r in results)
        loss = sum(r.loss * r.loss_numel for r in results) / numel if numel else None
        return accuracy, ned, loss

    def on_validation_epoch_end(self) -> None:
        if not self.validation_results:
            return
        accuracy, ned, loss = self.aggregate(self.validation_results)
        self.validation_results.clear()
        self.log("val_accuracy", 100 * accuracy, sync_dist=True)
        self.log("val_NED", 100 * ned, sync_dist=True)
        if loss is not None:
            self.log("val_loss", loss, sync_dist=True)
        self.log("hp_metric", accuracy, sync_dist=True)


class PLMSystem(CrossEntropySystem):
    """Trains its plain model `self.model` (a `Recognizer`) with permutation language modelling:
    `perm_num` permutations per batch (forward and reverse first, mirrored pairs when
    `perm_mirrored`). Subclasses build the model and choose the optimizer."""

    model: Recognizer

    def __init__(self, charset_train: str, charset_test: str, batch_size: int, lr: float, warmup_pct: float,
                 weight_decay: float, perm_num: int, perm_forward: bool, perm_mirrored: bool) -> None:
        super().__init__(charset_train, charset_test, batch_size, lr, warmup_pct, weight_decay)
        if perm_mirrored and perm_num % 2:
            raise ValueError(f"perm_num must be even when perm_mirrored is set, got {perm_num}")
        self.perm_num = perm_num
        self.perm_forward = perm_forward
        self.perm_mirrored = perm_mirrored

    def forward(self, images: Tensor, max_length: Optional[int] = None) -> Tensor:
        return self.model(images, max_length)

    def gen_tgt_perms(self, tgt: Tensor) -> Tensor:
        """The permutations (P, T+2) of a batch of encoded targets (N, T+2)."""
        return generate_permutations(tgt.shape[1] - 2, self.perm_num, self.perm_forward, self.perm_mirrored,
                                     tgt.device)

    def set_training_options(self, grad_checkpointing: bool, grad_checkpointing_decoder: bool,
                             compile_train_step: bool) -> None:
        """Activation checkpointing of the model's encoder blocks and decoder layers (see
        `Recognizer.set_grad_checkpointing`), and `torch.compile` of the training step's tensor computation
        (`train_loss`: everything from the encoded labels and their permutations to the loss)."""
        self.model.set_grad_checkpointing(grad_checkpointing, grad_checkpointing_decoder)
        self.train_loss = torch.compile(self.permutation_step) if compile_train_step else self.permutation_step

    def training_step(self, batch: Tuple[Tensor, List[str]], batch_idx: int) -> Tensor:
        images, labels = batch
        tgt = self.tokenizer.encode(labels, self.device)
        loss = self.train_loss(images, tgt, self.gen_tgt_perms(tgt))
        self.log("loss", loss, prog_bar=True)
        return loss

    def permutation_step(self, images: Tensor, tgt: Tensor, perms: Tensor) -> Tensor:
        """The permutation-language-model loss of images and their encoded labels (N, T+2) over permutations
        (P, T+2)."""
        content_masks, query_masks = permutation_masks(perms)
        tgt_in = tgt[:, :-1]
        padding = (tgt_in == self.pad_id) | (tgt_in == self.eos_id)
        targets = permutation_targets(tgt[:, 1:], len(perms), self.eos_id, self.pad_id)
        return self.summed_loss(images, tgt_in, targets, content_masks, query_masks, padding) / (
            targets != self.pad_id).sum()

    def summed_loss(self, images: Tensor, tgt_in: Tensor, targets: Tensor, content_masks: Tensor,
                    query_masks: Tensor, padding: Tensor) -> Tensor:
        """The cross-entropy summed over every permutation's targets (P, N, T+1) (see `head_cross_entropy`), and
        over the branches with their loss weights: here the one decoder of PARSeq's layout."""
        model = self.model
        memory_kv = model.memory_kv(model.encode(images))
        features = torch.stack([model.features(tgt_in, memory_kv, None, query_masks[k], content_masks[k], padding)
                                for k in range(len(query_masks))])
        return head_cross_entropy(model.head, features, targets, self.pad_id)[0]

    def linear_lr(self) -> float:
        """The base learning rate scaled by the effective batch / 512 (CLIP4STR's rule)."""
        trainer = self.trainer
        return self.lr * trainer.accumulate_grad_batches * trainer.world_size * self.batch_size / 512

    def sqrt_lr(self) -> float:
        """The base learning rate scaled by accumulation x sqrt(processes) x batch / 256 (PARSeq's rule)."""
        trainer = self.trainer
        return self.lr * trainer.accumulate_grad_batches * math.sqrt(trainer.world_size) * self.batch_size / 256

    def adamw_one_cycle(self, groups: Sequence[Dict[str, Any]], **adamw: Any) -> Dict[str, Any]:
        """AdamW over parameter `groups` (each with its `lr`) under a OneCycle schedule that peaks at
        each group's lr after `warmup_pct` of the steps, stepped every optimizer step."""
        optimizer = torch.optim.AdamW(groups, fused=self.device.type in ("cuda", "cpu"), **adamw)
        scheduler = OneCycleLR(optimizer, [group["lr"] for group in groups], self.trainer.estimated_stepping_batches,
                               pct_start=self.warmup_pct, cycle_momentum=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def two_rate_adamw(self, lr: float, encoder: Sequence[List[Tensor]], decoder: Sequence[List[Tensor]],
                       coef_lr: float, coef_wd: float) -> Dict[str, Any]:
        """CLIP4STR's optimizer: AdamW (betas 0.9/0.98, eps 1e-6) over the encoder's parameters without and
        with weight decay at `lr`, and the decoder's at `coef_lr` times that (weight decay x `coef_wd`)."""
        (encoder_plain, encoder_decay), (decoder_plain, decoder_decay) = encoder, decoder
        return self.adamw_one_cycle([
            {"params": encoder_plain, "weight_decay": 0.0, "lr": lr},
            {"params": encoder_decay, "weight_decay": self.weight_decay, "lr": lr},
            {"params": decoder_plain, "weight_decay": 0.0, "lr": lr * coef_lr},
            {"params": decoder_decay, "weight_decay": self.weight_decay * coef_wd, "lr": lr * coef_lr},
        ], betas=(0.9, 0.98), eps=1e-6)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """Under FSDP, FSDP clips the norm over all the shards (Lightning's clipping refuses sharded gradients).
        In mixed precision (bf16-mixed on a CPU, 16-mixed), Lightning refuses to clip for the fused AdamW, which would
        unscale fp16's gradients inside its step: the gradient scaler (fp16's; bf16 has none) unscales them first,
        and the step then knows they are."""
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(self.trainer.model, FullyShardedDataParallel):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        elif gradient_clip_val and isinstance(plugin, MixedPrecision) and _optimizer_handles_unscaling(optimizer):
            if plugin.scaler is not None:
                plugin.scaler.unscale_(optimizer)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val,
                                     GradClipAlgorithmType(gradient_clip_algorithm or "norm"))
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def split_decay(named_params: Sequence[Tuple[str, Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
    """The trainable parameters without and with weight decay (see `NO_DECAY_MARKERS`)."""
    plain: List[Tensor] = []
    decay: List[Tensor] = []
    for name, param in named_params:
        if param.requires_grad:
            decays = param.ndim >= 2 and not any(marker in name for marker in NO_DECAY_MARKERS)
            (decay if decays else plain).append(param)
    return plain, decay
