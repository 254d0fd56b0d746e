"""Attention maps and Grad-CAM of every model family, recorded from the tested decoding path: the logits do not
change, the maps are distributions over the memory laid out on the model's patch grid, one per decoded character
and EOS, and explain.py draws them."""
import copy
from pathlib import Path

import pytest
import torch
from PIL import Image

from strhub.app import explain as explain_cli
from strhub.evaluation.explain import explain, grad_cam, record
from strhub.models.recording import AttentionRecorder
from strhub.models.utils import create_model

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("tiny", "str_adapter-mini", "parseq-mini")
B16_SHAPED = {  # ViT-B/16's input and patch grid (14 x 14) on a narrow CLIP
    "img_size": [224, 224],
    "clip_arch": {"embed_dim": 64, "vision_cfg": {"image_size": [224, 224], "patch_size": 16, "width": 64, "layers": 1},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "layers": 1}},
}


def _model(experiment: str, **overrides):
    torch.manual_seed(0)
    return create_model(experiment, **overrides).model.eval()


@pytest.fixture(scope="module")
def models():
    """One model of each family, built once: tests that change one change a copy."""
    return {experiment: _model(experiment) for experiment in FAMILIES}


def _images(model, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, *model.image_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def _read_exactly(model, length: int) -> None:
    """Makes every decoder of `model` read `length` characters, then EOS, whatever the image: position `length`'s
    query gets a large component along a direction that only the EOS logit reads (the others read none of it)."""
    for decoder in model.named_decoders().values():
        width = decoder.pos_queries.shape[-1]
        direction = torch.nn.functional.normalize(torch.randn(width, generator=torch.Generator().manual_seed(2)), dim=0)
        decoder.pos_queries[0, length] += 100 * direction
        decoder.head.weight -= torch.outer(decoder.head.weight @ direction, direction)
        decoder.head.weight[0] = direction
        decoder.head.bias[0] = -0.5 * width ** 0.5


@pytest.mark.parametrize("experiment", FAMILIES)
@pytest.mark.parametrize("decoding", [{}, {"decode_ar": False}, {"refine_iters": 0}, {"refine_iters": 2}])
def test_recording_leaves_the_logits_bit_identical(models, monkeypatch, experiment, decoding):
    model = models[experiment]
    for name, value in decoding.items():
        monkeypatch.setattr(model, name, value)
    images = _images(model)
    with torch.inference_mode():
        plain = model(images)
    logits, recorder = record(model, images)
    assert torch.equal(plain, logits)
    expected = 1 + model.refine_iters
    for name in model.named_decoders():
        passes = recorder.passes_of(name)
        assert [p.name for p in passes][1:] == [f"refinement {k}" for k in range(1, expected)]
        assert passes[0].name == ("greedy" if model.decode_ar else "parallel")
    assert torch.equal(recorder.passes[-1].logits, logits)  # the last pass is the output


@pytest.mark.parametrize("experiment, depth", [(experiment, 1) for experiment in FAMILIES] + [("parseq-mini", 2)])
def test_each_map_is_a_distribution_over_the_memory_per_head(models, experiment, depth):
    model = models[experiment] if depth == 1 else _model(experiment, dec_depth=depth)
    for maps in explain(model, _images(model, n=2))[0].passes:
        assert len(maps.layers) == depth
        for layer in maps.layers:
            characters, heads, memory = layer.shape
            assert heads == model.named_decoders()[maps.decoder].layers[0].cross_attn.num_heads
            assert memory == len(maps.layout)
            assert (layer >= 0).all()
            torch.testing.assert_close(layer.sum(-1), torch.ones(characters, heads), atol=1e-5, rtol=0)


@pytest.mark.parametrize("experiment, overrides, grid, prefix", [
    ("tiny", B16_SHAPED, (14, 14), 1),
    ("str_adapter-mini", {}, (4, 16), 1),       # 32 x 128 in 8 x 8 patches
    ("parseq-mini", {}, (8, 16), 0),            # 32 x 128 in 4 x 8 patches, no class token
])
def test_the_maps_grid_is_the_models_patch_grid(models, experiment, overrides, grid, prefix):
    model = _model(experiment, **overrides) if overrides else models[experiment]
    for maps in explain(model, _images(model, n=1))[0].passes:
        assert maps.layout.grid == grid and maps.layout.prefix == prefix
        cls, patches, text = maps.layout.split(maps.attention)
        assert patches.shape[-2:] == grid and cls.shape[-1] == prefix
        assert maps.attention.shape[-1] == prefix + grid[0] * grid[1] + len(text[0, 0])
        if maps.decoder == "cross":
            assert len(maps.layout.text) == model.context_length == text.shape[-1]


def test_the_cross_decoders_text_part_is_labelled_with_the_captions_bpe_tokens(models):
    """Cross pass K reads the caption of visual pass K: start, its BPE tokens, end, then padding."""
    model = copy.deepcopy(models["tiny"])
    _read_exactly(model, 3)
    explanation = explain(model, _images(model, n=1))[0]
    visual = {maps.name: maps for maps in explanation.passes if maps.decoder == "visual"}
    cross = [maps for maps in explanation.passes if maps.decoder == "cross"]
    assert [maps.name for maps in cross] == list(visual)
    for maps in cross:
        caption = model.charset_adapter(visual[maps.name].text)
        tokens = maps.layout.text
        end = tokens.index("<end>")
        assert len(tokens) == model.context_length and tokens[0] == "<start>"
        assert "".join(tokens[1:end]) == caption and not any(tokens[end + 1:])


@pytest.mark.parametrize("experiment", FAMILIES)
@pytest.mark.parametrize("length", [0, 3])
def test_there_is_a_map_per_decoded_character_and_eos(models, experiment, length):
    model = copy.deepcopy(models[experiment])
    _read_exactly(model, length)
    explanations = explain(model, _images(model, n=2), with_grad_cam=True)
    for explanation in explanations:
        assert len(explanation.text) == length and len(explanation.confidences) == length + 1
        for maps in explanation.passes:
            assert len(maps.text) == length
            assert all(layer.shape[0] == length + 1 for layer in maps.layers)
        assert set(explanation.grad_cam) == set(model.named_decoders())
        assert all(len(cam) == length + 1 for cam in explanation.grad_cam.values())


@pytest.mark.parametrize("experiment", FAMILIES)
def test_grad_cam_is_finite_non_negative_and_differs_between_characters(models, experiment):
    model = models[experiment]
    images = _images(model, n=2)
    cams = grad_cam(model, images)
    _, (rows, cols) = model.token_grid
    for name, cam in cams.items():
        assert cam.shape[0] == 2 and cam.shape[2:] == (rows, cols)
        assert torch.isfinite(cam).all() and (cam >= 0).all() and cam.sum() > 0
        assert not torch.allclose(cam[:, 0], cam[:, 1])
    assert not any(param.grad is not None for param in model.parameters())  # nothing but the maps was computed


def test_leaf_memory_gives_the_gradient_of_the_decoder_wrt_its_memory(models, monkeypatch):
    """The gradient Grad-CAM reads is the one of a decoder run by hand on a leaf memory."""
    model = models["parseq-mini"]
    monkeypatch.setattr(model, "refine_iters", 0)
    images = _images(model, n=1)
    with torch.enable_grad(), AttentionRecorder(model.named_decoders(), leaf_memory=True) as recorder:
        logits = model(images)
        memory = recorder.memories["decoder"][0]
        recorded, = torch.autograd.grad(logits[0, 1].max(), memory)
    leaf = model.encode(images).detach().requires_grad_()
    tokens = model.context_buffer(1, logits.shape[1], leaf.device)
    by_hand = model.first_pass(model, model.memory_kv(leaf), tokens, logits.shape[1], stop_early=True)
    expected, = torch.autograd.grad(by_hand[0, 1].max(), leaf)
    torch.testing.assert_close(recorded, expected)


def test_explain_cli_draws_a_png_per_image(tmp_path, capsys):
    system = create_model("tiny")
    _read_exactly(system.model, 4)
    checkpoint = tmp_path / "reads-four.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, checkpoint)
    names = ["demo_1.png", "image_1576.jpeg", "uber-27491.jpg"]
    (tmp_path / "in").mkdir()
    for name in names:
        (tmp_path / "in" / name).write_bytes((REPO / "misc" / "test_images" / name).read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        explain_cli.main([str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--method", "gradcam",
                          "--batch_size", "2", "--device", "cpu"])
    assert exit_info.value.code == 1  # the broken file is reported, the others are drawn
    output = capsys.readouterr()
    assert "broken.png: error:" in output.err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(name).with_suffix(".png").name for name in names)
    for name in names:
        assert f"{name}: " in output.out and str(out / Path(name).with_suffix(".png")) in output.out
    for name in written:
        with Image.open(out / name) as png:
            assert 600 <= png.width <= 1000 and 600 <= png.height <= 1400, png.size
