"""Inference in bfloat16 with the weights cast once, and `--precision auto`."""
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEST_IMAGES, make_tiny_model
from torch import nn

from strhub import host
from strhub.host import choose_precision, inference_precision
from strhub.models.layout import _is_input_major

REPO = Path(__file__).resolve().parents[1]


def _images(count: int, size) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)


def test_bf16_casts_the_weights_once_and_float32_changes_nothing() -> None:
    model = make_tiny_model().model.eval()
    images = _images(6, model.image_size)
    with torch.inference_mode():
        expected = model(images)
        with inference_precision(model, "cpu", "32"):
            assert torch.equal(model(images), expected)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    bf16 = copy.deepcopy(model)
    layouts = {name: _is_input_major(p) for name, p in bf16.named_parameters() if p.dim() == 2}
    with torch.inference_mode(), inference_precision(bf16, "cpu", "bf16"):
        logits = bf16(images)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    for name, module in bf16.named_modules():
        if isinstance(module, nn.LayerNorm) or name.endswith("head"):
            assert module.weight.dtype == torch.float32, name
        elif isinstance(module, nn.Linear):
            assert module.weight.dtype == torch.bfloat16, name
    assert {name: _is_input_major(p) for name, p in bf16.named_parameters() if p.dim() == 2} == layouts
    # float32's first step within the rounding that autocast to bfloat16 brings (later steps follow the context each
    # read, and random weights have near ties)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(images)
    error, autocast_error = ((output[:, 0] - expected[:, 0]).abs().max() for output in (logits, autocast))
    assert 0 < error <= 2 * autocast_error
    weights = {name: p.data_ptr() for name, p in bf16.named_parameters()}
    with torch.inference_mode(), inference_precision(bf16, "cpu", "bf16"):  # cast once: a second pass casts nothing
        assert torch.equal(bf16(images), logits)
    assert {name: p.data_ptr() for name, p in bf16.named_parameters()} == weights


@pytest.mark.parametrize("flags, chosen", [("fpu avx512f avx512_bf16 avx512_vnni", "bf16"),
                                           ("fpu amx_bf16 amx_tile", "bf16"), ("fpu avx2 avx512f", "32")])
def test_auto_picks_bf16_where_the_cpu_multiplies_it_and_says_so(flags, chosen, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "cpuinfo")
    assert choose_precision("auto", "cpu") == chosen
    line = capsys.readouterr().err
    assert line.startswith(f"--precision auto: {chosen} (") and ("bf16" in line.split("(", 1)[1]) == (chosen == "bf16")
    assert choose_precision("32", "cpu") == "32" and choose_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "absent")
    assert choose_precision("auto", "cpu", announce=False) == "32"


def test_read_py_reads_in_the_precision_auto_picks(checkpoint: Path) -> None:
    proc = subprocess.run([sys.executable, "read.py", str(checkpoint), str(TEST_IMAGES / "demo_1.png"), "--device",
                           "cpu", "--precision", "auto"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    chosen = choose_precision("auto", "cpu", announce=False)
    assert re.search(rf"^--precision auto: {chosen} \(", proc.stderr, re.M)
    assert re.fullmatch(rf"{re.escape(str(TEST_IMAGES / 'demo_1.png'))}: \S+\n", proc.stdout)
