"""The CLIP4STR model: architecture, checkpoints, decoding, training step and errors."""
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH, make_tiny_model

from strhub.app.common import parse_model_args
from strhub.models import plm
from strhub.models.checkpoint import InvalidCheckpointError, load_model
from strhub.models.clip import arch_from_state_dict, build_clip, load_pretrained_clip, read_clip_state_dict
from strhub.models.clip_blocks import QUICK_GELU_BAND_ROWS, encode_text_tokens, mlp, shared_prefixes
from strhub.models.plm import head_cross_entropy, permutation_masks, permutation_targets
from strhub.models.utils import create_model, load_from_checkpoint, load_weights


@pytest.mark.parametrize("experiment, total, trainable, tensors", [
    ("vl4str", 158_256_319, 114_005_694, 354),
    ("vl4str-base32", 159_912_895, 115_662_270, 354),
    ("vl4str-large", 446_861_247, 366_329_534, 498),
    ("vl4str-huge", 1_020_157_631, 893_907_646, 738),
])
def test_parameter_counts_match_the_original(experiment, total, trainable, tensors):
    with torch.device("meta"):
        model = create_model(experiment, clip_pretrained=None)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert len(model.model.state_dict()) == tensors


def test_vit_h_uses_64_wide_heads():
    with torch.device("meta"):
        model = create_model("vl4str-huge", clip_pretrained=None)
    assert model.model.clip_model.visual.transformer.resblocks[0].attn.num_heads == 20


def test_optimizer_groups_of_b16():
    with torch.device("meta"):
        model = create_model("vl4str", clip_pretrained=None)
    assert [len(group) for group in model.param_groups()] == [151, 76, 38, 14]


def test_frozen_parameters_are_the_original_set(tiny_model):
    frozen = {n for n, p in tiny_model.model.clip_model.named_parameters() if not p.requires_grad}
    assert frozen == {"token_embedding.weight", "positional_embedding", "logit_scale",
                      *(f"transformer.resblocks.0.{n}" for n, _ in
                        tiny_model.model.clip_model.transformer.resblocks[0].named_parameters())}
    tiny_model.train()
    assert not tiny_model.model.clip_model.transformer.resblocks[0].training
    assert tiny_model.model.clip_model.transformer.resblocks[1].training


def test_architecture_is_read_off_tensors():
    with torch.device("meta"):
        state_dict = build_clip({"embed_dim": 512,
                                 "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12},
                                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512,
                                              "layers": 12}}).state_dict()
    arch = arch_from_state_dict(state_dict)
    assert arch == {"embed_dim": 512,
                    "vision_cfg": {"image_size": [224, 224], "patch_size": 16, "width": 768, "layers": 12},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "layers": 12}}


def _images(n=3, seed=0):
    return torch.rand(n, 3, 32, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lightning_checkpoint_round_trip(tiny_model, tmp_path):
    tiny_model.eval()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict(), "hyper_parameters": dict(tiny_model.hparams)}, path)
    loaded = load_from_checkpoint(path).eval()
    images = _images()
    with torch.inference_mode():
        assert torch.allclose(tiny_model(images), loaded(images), atol=1e-6)
    assert loaded.hparams.img_size == [32, 64]
    assert loaded.hparams.charset_train == tiny_model.hparams.charset_train


def test_original_layout_state_dict_loads(tiny_model, tmp_path):
    tiny_model.eval()
    state_dict = tiny_model.model.state_dict()
    assert all(k.split(".")[0] in {"clip_model", "visual_decoder", "cross_decoder"} for k in state_dict)
    path = tmp_path / "clip4str_tiny.pt"
    torch.save(state_dict, path)
    loaded = load_from_checkpoint(path, img_size=[32, 64], dec_num_heads=4).eval()
    with torch.inference_mode():
        assert torch.allclose(tiny_model(_images()), loaded(_images()), atol=1e-6)


def test_plain_model_loads_without_lightning(tiny_model, tmp_path):
    tiny_model.eval()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict(), "hyper_parameters": dict(tiny_model.hparams)}, path)
    loaded = load_model(path).eval()
    assert loaded.image_size == (32, 64)
    with torch.inference_mode():
        assert torch.allclose(tiny_model(_images()), loaded(_images()), atol=1e-6)
    script = (f"import sys, strhub.app.read, strhub.app.bench.speed; from strhub.models.checkpoint import load_model; "
              f"load_model({str(path)!r}); sys.exit('pytorch_lightning' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", script], cwd=root).returncode == 0


def test_overrides_change_settings(tiny_model, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict(), "hyper_parameters": dict(tiny_model.hparams)}, path)
    loaded = load_from_checkpoint(path, charset_test="0123456789", refine_iters=0)
    assert loaded.charset_adapter("a1b2") == "12"
    assert loaded.model.refine_iters == 0


def test_fine_tuning_weights_load_into_a_fresh_model(tiny_model, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    fresh = make_tiny_model()
    load_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tiny_model.state_dict().values()))


def test_wrong_checkpoints_get_clear_errors(tmp_path):
    other = tmp_path / "parseq.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(InvalidCheckpointError, match="not a checkpoint of a known model family.*encoder.weight"):
        load_from_checkpoint(other)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidCheckpointError, match="garbage.ckpt"):
        load_from_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_from_checkpoint(tmp_path / "missing.ckpt")


def test_missing_clip_file_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.clip_pretrained"):
        make_tiny_model(clip_pretrained=str(tmp_path / "ViT-B-16.pt"))


def test_unknown_clip_file_format(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="weights.bin"):
        read_clip_state_dict(path)


def test_openclip_state_dict_is_rounded_through_fp16(tmp_path):
    torch.manual_seed(0)
    clip = build_clip(TINY_ARCH)
    state_dict = clip.state_dict()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state_dict, path)
    loaded, arch = load_pretrained_clip(path, image_size=[32, 64])
    assert arch["vision_cfg"]["image_size"] == [32, 64]
    weight = loaded.visual.transformer.resblocks[0].attn.in_proj_weight
    assert torch.equal(weight, state_dict["visual.transformer.resblocks.0.attn.in_proj_weight"].half().float())
    assert not torch.equal(weight, state_dict["visual.transformer.resblocks.0.attn.in_proj_weight"])
    assert torch.equal(loaded.positional_embedding, state_dict["positional_embedding"])


def test_torchscript_archive_is_read_by_content(tmp_path):
    clip = build_clip(TINY_ARCH).eval()
    with torch.no_grad():  # the blocks' forward is ours, which computes QuickGELU in place out of autograd
        scripted = torch.jit.trace_module(clip, {"encode_image": torch.zeros(1, 3, 32, 64)})
    path = tmp_path / "weights.clip"
    scripted.save(str(path))
    state_dict = read_clip_state_dict(path)
    assert torch.equal(state_dict["visual.proj"], clip.visual.proj)


def test_text_encoder_computes_shared_prefixes_once_with_the_same_features(tiny_model):
    model = tiny_model.model
    clip = model.clip_model
    token_ids = model.caption_tokenizer(["abc", "abd", "abc", "xyz", "a"], model.context_length)
    length = token_ids.shape[1]
    first, groups = shared_prefixes(token_ids)
    prefixes = {tuple(row[:i + 1]) for row in token_ids.tolist() for i in range(length)}
    assert len(first) == len(prefixes) < token_ids.numel()
    assert torch.equal(token_ids.flatten()[first][groups], token_ids.flatten())
    causal = torch.full((length, length), float("-inf")).triu(1)
    with torch.no_grad():
        tokens = clip.transformer(clip.token_embedding(token_ids) + clip.positional_embedding[:length], attn_mask=causal)
        expected = clip.ln_final(tokens) @ clip.text_projection
        features = encode_text_tokens(clip, token_ids)
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.equal(features[0], features[2])


def test_mlp_in_bands_equals_open_clip_mlp(tiny_model):
    block = tiny_model.model.clip_model.visual.transformer.resblocks[0]
    x = torch.randn(2, QUICK_GELU_BAND_ROWS + 21, block.mlp.c_fc.in_features, requires_grad=True)
    with torch.no_grad():
        expected = block.mlp(x)
        assert torch.equal(mlp(block, x), expected)
    out = mlp(block, x)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_greedy_cache_equals_full_causal_recompute(tiny_model):
    tiny_model.eval()
    decoder = tiny_model.model.visual_decoder
    memory = torch.randn(2, 9, 64)
    tokens = torch.randint(1, 90, (2, 6))
    tokens[:, 0] = tiny_model.bos_id
    causal = torch.triu(torch.full((6, 6), float("-inf")), 1)
    with torch.inference_mode():
        full = decoder.decode(tokens, decoder.memory_kv(memory), None, causal, causal)
        state = decoder.start(decoder.memory_kv(memory), 6)
        stepped = torch.stack([decoder.step(state, tokens[:, i], i) for i in range(6)], dim=1)
    assert torch.allclose(full, stepped, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {}, {"dec_depth": 2}, {"decode_ar": False}, {"use_language_model": False}, {"refine_iters": 0},
    {"refine_iters": 2}, {"use_share_dim": False}, {"clip_cls_eot_feature": True},
])
def test_inference_variants_run(overrides):
    torch.manual_seed(0)
    model = make_tiny_model(**overrides).eval()
    with torch.inference_mode():
        logits = model(_images(4))
        validation = model(_images(4), 5)
    assert logits.shape[0] == 4 and logits.shape[2] == 95
    assert validation.shape == (4, 6, 95)
    if overrides.get("refine_iters", 1):
        assert logits.shape[1] == 26


def test_deeper_decoder_with_early_stop_works():
    torch.manual_seed(0)
    model = make_tiny_model(dec_depth=2).eval()
    with torch.no_grad():
        model.model.visual_decoder.head.bias[0] = 8.0
        logits = model(_images(2))
    assert logits.shape == (2, 26, 95)


def test_permutations_short_labels(tiny_model):
    assert tiny_model.gen_tgt_perms(torch.zeros(1, 3)).tolist() == [[0, 1, 2]]
    assert tiny_model.gen_tgt_perms(torch.zeros(1, 4)).tolist() == [[0, 1, 2, 3], [0, 3, 2, 1]]
    for _ in range(10):
        perms = tiny_model.gen_tgt_perms(torch.zeros(1, 6))
        assert len(perms) == 6
        orders = [tuple(p[1:-1].tolist()) for p in perms[2:]]
        assert len(set(orders)) == 4


@pytest.mark.parametrize("num_chars", [5, 9, 25])
def test_permutations_long_labels(tiny_model, num_chars):
    perms = tiny_model.gen_tgt_perms(torch.zeros(2, num_chars + 2))
    assert perms.shape == (6, num_chars + 2)
    assert perms[0].tolist() == list(range(num_chars + 2))
    assert perms[1].tolist() == [0] + list(range(num_chars + 1, 0, -1))
    assert (perms[:, 0] == 0).all() and (perms[2:, -1] == num_chars + 1).all()
    for perm in perms:
        assert sorted(perm.tolist()) == list(range(num_chars + 2))
    assert torch.equal(perms[3, 1:-1], perms[2, 1:-1].flip(0))
    assert torch.equal(perms[5, 1:-1], perms[4, 1:-1].flip(0))


def test_attention_masks_follow_the_permutation():
    content, query = permutation_masks(torch.tensor([[0, 3, 1, 2, 4]]))
    visible = lambda mask: [[j for j, v in enumerate(row) if v == 0] for row in mask.tolist()]
    assert visible(content[0]) == [[0], [0, 1, 3], [0, 1, 2, 3], [0, 3]]
    assert visible(query[0]) == [[0, 3], [0, 1, 3], [0], [0, 1, 2, 3]]


def test_masks_equal_the_loop_definition():
    for perm in itertools.islice(itertools.permutations(range(1, 6)), 0, 120, 7):
        perm = torch.tensor([0, *perm, 6])
        expected = torch.zeros(7, 7)
        for i in range(7):
            expected[perm[i], perm[i + 1:]] = float("-inf")
        content, query = permutation_masks(perm[None])
        assert torch.equal(content[0], expected[:-1, :-1])
        expected.fill_diagonal_(float("-inf"))
        assert torch.equal(query[0], expected[1:, :-1])


@pytest.mark.parametrize("num_classes", [97, 6000])
def test_the_chunked_head_loss_equals_cross_entropy_over_full_logits(num_classes, monkeypatch):
    """Two weighted branches over three permutations: the loss, every gradient and the argmax classes equal those
    of the original's full logits, with several chunks of rows (and one)."""
    monkeypatch.setattr(plm, "CHUNK_ELEMENTS", 5 * num_classes)
    torch.manual_seed(0)
    heads = [torch.nn.Linear(16, num_classes), torch.nn.Linear(16, num_classes)]
    features = [torch.randn(3, 4, 6, 16, requires_grad=True) for _ in heads]
    eos, pad = 0, num_classes + 1
    tgt_out = torch.tensor([[5, 9, 0, pad, pad, pad], [7, 0, pad, pad, pad, pad], [1, 2, 3, 4, 5, 0],
                            [8, 8, 0, pad, pad, pad]])
    targets = permutation_targets(tgt_out, 3, eos, pad)
    assert torch.equal(targets[2], torch.where(tgt_out == eos, pad, tgt_out)) and torch.equal(targets[1], tgt_out)
    visual, ids = head_cross_entropy(heads[0], features[0], targets, pad, all_ids=True)
    loss = (visual + 0.5 * head_cross_entropy(heads[1], features[1], targets, pad)[0]) / (targets != pad).sum()
    parameters = [*heads[0].parameters(), *heads[1].parameters(), *features]
    grads = torch.autograd.grad(loss, parameters)
    expected = torch.zeros(())
    for k in range(3):  # the original: cross-entropy over every position's logits, padding ignored
        for weight, head, branch in zip((1.0, 0.5), heads, features):
            expected = expected + weight * torch.nn.functional.cross_entropy(
                head(branch[k]).flatten(end_dim=1), targets[k].flatten(), ignore_index=pad, reduction="sum")
    expected = expected / (2 * (tgt_out != pad).sum() + (targets[2] != pad).sum())
    expected_grads = torch.autograd.grad(expected, parameters)
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    assert torch.equal(ids, heads[0](features[0]).argmax(-1))


def _fixed_batch():
    return _images(8, seed=1), ["ab", "hello", "World", "42", "x", "STR!", "clip", "a-b"]


def test_one_step_lowers_the_loss_and_keeps_frozen_weights():
    torch.manual_seed(0)
    model = make_tiny_model(dropout=0.0, perm_num=2)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = _fixed_batch()
    before = model.training_step(batch, 0)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = model.training_step(batch, 0)
    assert after < before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = {n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert any(n.startswith("model.clip_model.visual.") for n in changed)
    assert "model.clip_model.transformer.resblocks.1.attn.in_proj_weight" in changed
    assert any(n.startswith("model.cross_decoder.") for n in changed)


def test_cross_branch_sees_detached_image_tokens():
    torch.manual_seed(0)
    model = make_tiny_model(dropout=0.0, perm_num=2, cross_loss_w=1.0)
    images, labels = _fixed_batch()
    model.zero_grad()
    model.cross_loss_w = 0.0
    model.training_step((images, labels), 0).backward()
    visual_only = model.model.clip_model.visual.conv1.weight.grad.clone()
    model.zero_grad()
    model.cross_loss_w = 1.0
    model.training_step((images, labels), 0).backward()
    assert torch.allclose(model.model.clip_model.visual.conv1.weight.grad, visual_only, atol=1e-6)
    assert model.model.clip_model.transformer.resblocks[1].attn.in_proj_weight.grad.abs().sum() > 0


def test_model_arguments_are_parsed():
    assert parse_model_args(["refine_iters:int=2", "charset_test:str=abc", "decode_ar:bool=False",
                             "cross_loss_w:float=0.5", "block_ids:list=[1,3, 5]"]) == {
        "refine_iters": 2, "charset_test": "abc", "decode_ar": False, "cross_loss_w": 0.5, "block_ids": [1, 3, 5]}
    with pytest.raises(ValueError, match="name:type=value"):
        parse_model_args(["refine_iters=2"])


def test_compiled_encoder_gives_the_same_loss():
    torch.manual_seed(0)
    eager = make_tiny_model(dropout=0.0, perm_num=2)
    compiled = make_tiny_model(dropout=0.0, perm_num=2, compile_encoder=True)
    compiled.load_state_dict(eager.state_dict())
    batch = _fixed_batch()
    expected = eager.training_step(batch, 0)
    loss = compiled.training_step(batch, 0)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert compiled.model.clip_model.visual.conv1.weight.grad is not None


def test_attribute_dict_hyper_parameters_load(tiny_model, tmp_path):
    from lightning_fabric.utilities.data import AttributeDict

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict(), "hyper_parameters": AttributeDict(tiny_model.hparams)}, path)
    assert load_from_checkpoint(path).hparams.img_size == [32, 64]


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_cannot_run_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload()}}, path)
    with pytest.raises(InvalidCheckpointError, match=r"refusing to load .*evil\.ckpt.*GLOBAL print"):
        load_from_checkpoint(path)


def test_weights_are_input_major_out_of_training_with_the_same_values(tiny_model, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_model.state_dict(), "hyper_parameters": dict(tiny_model.hparams)}, path)
    loaded = load_from_checkpoint(path)
    weight = loaded.model.visual_decoder.layers[0].linear1.weight
    text_weight = loaded.model.clip_model.transformer.resblocks[0].attn.in_proj_weight
    assert weight.is_contiguous() and text_weight.is_contiguous()
    loaded.eval()
    assert weight.stride() == (1, weight.shape[0]) and text_weight.stride() == (1, text_weight.shape[0])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values()))
    loaded.train()
    assert weight.is_contiguous() and text_weight.is_contiguous()


@pytest.mark.parametrize("features_dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_head_loss_is_right_under_bf16_autocast(features_dtype, monkeypatch):
    """bf16-mixed training on a CPU: under autocast, the chunked loss and its gradients equal those of autograd over
    the full logits under the same autocast, and stay within bfloat16's rounding of float32's."""
    monkeypatch.setattr(plm, "CHUNK_ELEMENTS", 5 * 97)
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 97)
    features = torch.randn(2, 5, 64).to(features_dtype).requires_grad_()
    targets = torch.randint(0, 97, (2, 5))
    targets[1, 3:] = pad = 98
    parameters = [head.weight, head.bias, features]

    def full_logits_loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(head(features.float()).flatten(end_dim=1).float(), targets.flatten(),
                                                 ignore_index=pad, reduction="sum")

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(head, features, targets, pad)[0]
        expected = full_logits_loss()
    grads = torch.autograd.grad(loss, parameters)
    expected_grads = torch.autograd.grad(expected, parameters)
    fp32_loss = full_logits_loss()
    fp32_grads = torch.autograd.grad(fp32_loss, parameters)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(loss, fp32_loss, rtol=2e-2, atol=0)
    for grad, expected_grad, fp32_grad, parameter in zip(grads, expected_grads, fp32_grads, parameters):
        assert grad.dtype == parameter.dtype
        torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=2e-2, atol=2e-2)
        assert (grad.float() - fp32_grad.float()).norm() < 0.05 * fp32_grad.float().norm()
