"""Each family's small config learns: trained on a fixed set of rendered words, it reads those same images back,
and every trainable tensor has moved; CLIP4STR's and PARSeq's do so with words in seven scripts over a charset of
3,888 characters, 3,755 of them Chinese. They train without dropout, which memorising needs no defence against, and
take 20 to 50 s of CPU per family and test on an idle 2-core machine, with the one torch thread that conftest.py
sets, so that a busy machine slows them in proportion to its load."""
import copy
import shutil
from pathlib import Path
from typing import Dict

import pytest
import pytorch_lightning as pl
import torch
from multiscript import SCRIPT_WORDS, WORDS, multiscript_charset, script_fonts, script_of

from strhub.data.dataset import LmdbDataset
from strhub.data.module import SceneTextDataModule
from strhub.data.transforms import get_transform
from strhub.models.utils import create_model
from strhub.tools import render_words, typefaces

IMAGES = 32
BATCH = 16
# 200 steps: the words in DejaVu Sans and those in seven scripts are learnt by every family (PARSeq's reads about
# 91 % of either after 150)
STEPS = 200
# Scaled by the batch as each family does: CLIP4STR linearly (/ 512: 5e-4 for CLIP, 2e-3 for the decoders),
# STR-Adapter and PARSeq by batch / 256 (1e-3; 4e-3 for STR-Adapter's decoder).
LR = 1.6e-2


def train_and_validate(model: pl.LightningModule, root: Path, steps: int = STEPS, normalize_unicode: bool = True,
                       precision: str = "32") -> Dict[str, float]:
    """Trains `model` on root/train/synth at `precision`, validating (in float32) on the same images, and returns
    the validation metrics."""
    shutil.copytree(root / "train" / "synth", root / "val")  # validation = the training images
    hp = model.hparams
    datamodule = SceneTextDataModule(str(root), "synth", hp.img_size, hp.max_label_length, hp.charset_train,
                                     hp.charset_test, BATCH, num_workers=0, augment=False,
                                     normalize_unicode=normalize_unicode)
    trainer = pl.Trainer(accelerator="cpu", precision=precision, max_steps=steps, gradient_clip_val=20, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        model, datamodule=datamodule, verbose=False)[0]


@pytest.mark.parametrize("experiment", ["tiny", "str_adapter-mini", "parseq-mini"])
def test_small_config_memorises_rendered_words(experiment: str, tmp_path: Path) -> None:
    # strhub's own DejaVu Sans, not the machine's fonts, so that the images are the same everywhere
    render_words.main([str(tmp_path), "--train", str(IMAGES), "--val", "0", "--test", "0", "--charset", "36",
                       "--format", "png", "--seed", "1", "--fonts", str(typefaces.PACKAGED_FONTS / "DejaVuSans.ttf")])
    pl.seed_everything(0)
    model = create_model(experiment, lr=LR, batch_size=BATCH, dropout=0.0)
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    metrics = train_and_validate(model, tmp_path)

    unchanged = [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, initial[name])]
    assert not unchanged
    if experiment == "tiny":
        assert any(name.startswith("model.clip_model.transformer.") for name in initial)  # the text tower trains too
    assert metrics["val_accuracy"] >= 95, metrics
    if experiment == "tiny":
        assert_low_precisions_read_as_float32(model.model.eval(), tmp_path)


def assert_low_precisions_read_as_float32(model: torch.nn.Module, root: Path) -> None:
    """A model that reads (its training words): bfloat16 with the weights cast once, and its int8 ONNX export
    (`export.py --int8`: calibrated on rendered words), read those images as float32 does (the issue's target is
    99.5 %: here all 32 in bf16; in int8 at least 30 of 32, as its kernels differ from CPU to CPU: AVX2 without VNNI
    can saturate ONNX Runtime's u8 x s8 products; all 32 on this AVX512-VNNI machine)."""
    from strhub.app.export import rendered_images
    from strhub.deploy import OnnxReader
    from strhub.deploy.export import export_onnx
    from strhub.deploy.quantize import quantize_export

    dataset = LmdbDataset(root / "train" / "synth", model.tokenizer.charset, 25,
                          transform=get_transform(model.image_size))
    images = torch.stack([image for image, _ in dataset])
    with torch.inference_mode():
        expected = model.tokenizer.decode(model(images).softmax(-1))[0]
        bf16 = copy.deepcopy(model).cast_for_inference(torch.bfloat16)
        assert model.tokenizer.decode(bf16(images).float().softmax(-1))[0] == expected
    export_onnx(model, root / "export", opset=17, atol=1e-4)
    quantize_export(root / "export", rendered_images(model.tokenizer.charset, 32), "rendered words")
    int8 = OnnxReader(root / "export", device="cpu")(images)
    same = sum(a == b for a, b in zip(model.tokenizer.decode(int8.softmax(-1))[0], expected))
    assert same >= len(expected) - 2, f"int8 reads {same} of {len(expected)} as float32"


def test_tiny_memorises_rendered_words_in_bf16_mixed(tmp_path: Path) -> None:
    """bf16-mixed training on a CPU (autocast; the fused AdamW with gradient clipping, the chunked head loss in
    bfloat16 products) learns as float32 training does: the model reads its words back."""
    render_words.main([str(tmp_path), "--train", str(IMAGES), "--val", "0", "--test", "0", "--charset", "36",
                       "--format", "png", "--seed", "1"])
    pl.seed_everything(0)
    model = create_model("tiny", lr=LR, batch_size=BATCH, dropout=0.0)
    metrics = train_and_validate(model, tmp_path, precision="bf16-mixed")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert metrics["val_accuracy"] >= 95, metrics


@pytest.mark.parametrize("experiment", ["tiny", "parseq-mini"])
def test_small_config_memorises_words_in_seven_scripts(experiment: str, tmp_path: Path) -> None:
    charset = multiscript_charset()
    (tmp_path / "charset.txt").write_text("\n".join(charset) + "\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    render_words.main([str(tmp_path / "data"), "--train", str(IMAGES), "--val", "0", "--test", "0",
                       "--charset-file", str(tmp_path / "charset.txt"), "--words", str(tmp_path / "words.txt"),
                       "--word-share", "1", "--fonts", *script_fonts(), "--format", "png", "--seed", "1"])
    labels = LmdbDataset(tmp_path / "data" / "train" / "synth", charset, 25, normalize_unicode=False).labels
    assert len(labels) == IMAGES and set(labels) <= set(WORDS)  # each word as written, none folded or trimmed
    assert {script_of(label[0]) for label in labels} == set(SCRIPT_WORDS)
    assert sum(script_of(char) == "Han" for char in charset) == 3755 and len(charset) == 3888

    pl.seed_everything(0)
    model = create_model(experiment, lr=LR, batch_size=BATCH, dropout=0.0, charset_train=charset,
                         charset_test=charset)
    metrics = train_and_validate(model, tmp_path / "data", normalize_unicode=False)
    assert metrics["val_accuracy"] >= 95, metrics
