"""Evaluation shared by the scene-text systems: metrics per batch and their aggregation."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import pytorch_lightning as pl
import torch.nn.functional as F
from nltk import edit_distance
from torch import Tensor

from strhub.data.utils import CharsetAdapter, Tokenizer


@dataclass
class BatchResult:
    num_samples: int
    correct: int
    ned: float
    confidence: float
    label_length: int
    loss: Tensor
    loss_numel: int


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
        predictions, probs = self.tokenizer.decode(logits.softmax(-1))
        correct = ned = label_length = 0
        confidence = 0.0
        for prediction, prob, label in zip(predictions, probs, labels):
            confidence += prob.prod().item()
            prediction = self.charset_adapter(prediction)
            ned += edit_distance(prediction, label) / max(len(prediction), len(label))
            correct += prediction == label
            label_length += len(prediction)
        return BatchResult(len(labels), correct, ned, confidence, label_length, loss, loss_numel)

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
