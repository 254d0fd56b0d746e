"""Each family's small config learns: trained on a fixed set of rendered words, it reads those same images back,
and every trainable tensor has moved. About a minute of CPU per family on an idle 2-core machine, with the one torch
thread that conftest.py sets, so that a busy machine slows them in proportion to its load."""
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from strhub.data.module import SceneTextDataModule
from strhub.models.utils import create_model
from strhub.tools import render_words

WORDS = 64
BATCH = 32
STEPS = 200
# Scaled by the batch as each family does: CLIP4STR linearly (/ 512: 1e-3 for CLIP, 4e-3 for the decoders),
# STR-Adapter and PARSeq by batch / 256 (2e-3; 8e-3 for STR-Adapter's decoder).
LR = 1.6e-2


@pytest.mark.parametrize("experiment", ["tiny", "str_adapter-mini", "parseq-mini"])
def test_small_config_memorises_rendered_words(experiment: str, tmp_path: Path) -> None:
    render_words.main([str(tmp_path), "--train", str(WORDS), "--val", "0", "--test", "0", "--charset", "36",
                       "--format", "png", "--seed", "1"])
    shutil.copytree(tmp_path / "train" / "synth", tmp_path / "val")  # validation = the training images
    pl.seed_everything(0)
    model = create_model(experiment, lr=LR, batch_size=BATCH)
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    hp = model.hparams
    datamodule = SceneTextDataModule(str(tmp_path), "synth", hp.img_size, hp.max_label_length, hp.charset_train,
                                     hp.charset_test, BATCH, num_workers=0, augment=False)
    trainer = pl.Trainer(accelerator="cpu", precision=32, max_steps=STEPS, gradient_clip_val=20, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)

    unchanged = [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, initial[name])]
    assert not unchanged
    if experiment == "tiny":
        assert any(name.startswith("model.clip_model.transformer.") for name in initial)  # the text tower trains too
    metrics = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        model, datamodule=datamodule, verbose=False)[0]
    assert metrics["val_accuracy"] >= 95, metrics
