"""The three model families (CLIP4STR, STR-Adapter, PARSeq) through the same code: the registry, parameter counts
against the original's, optimizer groups and learning-rate rules, frozen CLIP in STR-Adapter, and checkpoints of
each family told apart by their contents."""
import copy
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from strhub.config import experiments, model_config
from strhub.models.checkpoint import InvalidCheckpointError, load_model
from strhub.models.registry import Family, get_family
from strhub.models.utils import create_model, load_from_checkpoint, load_weights

MINIS = ("tiny", "str_adapter-mini", "parseq-mini")
ADAPTER_TYPES = ("linear", "attention", "ladder", "linear_ladder", "ladder_pruning")


def _images(n=3, size=(32, 128), seed=0):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _save(system, tmp_path: Path, name: str):
    """The system as a Lightning-style .ckpt and its plain model as an original-layout .pt."""
    ckpt, pt = tmp_path / f"{name}.ckpt", tmp_path / f"{name}.pt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, ckpt)
    torch.save(system.model.state_dict(), pt)
    return ckpt, pt


def _fake_trainer(system, world_size=1, accumulate=1):
    system.trainer = SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate,
                                     estimated_stepping_batches=100)
    system.log = lambda *args, **kwargs: None  # no logger outside a Trainer
    return system


# Counts of the original code (VamosC/CLIP4STR 7497c15) on the meta device: total parameters and those its
# optimizer receives. STR-Adapter on a random OpenAI-layout ViT-B/16 CLIP.
ORIGINAL_COUNTS = {
    "parseq": (23_832_671, 23_832_671),
    "parseq-tiny": (6_018_143, 6_018_143),
    "parseq-base": (90_508_639, 90_508_639),
    "parseq-patch16-224": (24_116_831, 24_116_831),
}


@pytest.mark.parametrize("experiment", sorted(ORIGINAL_COUNTS))
def test_parseq_parameter_counts_match_the_original(experiment):
    with torch.device("meta"):
        system = create_model(experiment)
    total, optimized = ORIGINAL_COUNTS[experiment]
    assert sum(p.numel() for p in system.parameters()) == total
    assert sum(p.numel() for p in system.parameters() if p.requires_grad) == optimized


def test_every_experiment_builds_its_family(hf_folder):
    assert {Family.of(name).name for name in experiments()} == {"vl4str", "str_adapter", "parseq"}
    for name in experiments():
        overrides = {"clip_pretrained": None} if Family.of(name).name != "parseq" else {}
        if model_config(name).get("text_tower"):  # its Hugging Face folder: a tiny one
            overrides["text_tower"] = {"hf_path": str(hf_folder)}
        with torch.device("meta"):
            system = create_model(name, **overrides)
        assert isinstance(system, Family.of(name).system_class())


def test_the_registry_refuses_unknown_names_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown experiment 'parsek'; known: .*parseq.*str_adapter.*vl4str"):
        create_model("parsek")
    with pytest.raises(ValueError, match="unknown model family 'crnn'; known: vl4str, str_adapter, parseq"):
        get_family("crnn")
    with pytest.raises(ValueError, match="unknown adapter_type 'lora'; known: identity, linear, attention"):
        create_model("str_adapter-mini", adapter_type="lora")
    with pytest.raises(ValueError, match=r"'refine_iter' \(did you mean 'refine_iters'\?\)"):
        create_model("parseq-mini", refine_iter=2)


@pytest.mark.parametrize("experiment", MINIS)
def test_checkpoints_of_each_family_load_by_content(experiment, tmp_path):
    torch.manual_seed(0)
    system = create_model(experiment).eval()
    ckpt, pt = _save(system, tmp_path, "clip4str_vl4str_parseq_str_adapter")  # the name tells nothing
    images = _images(size=tuple(system.hparams.img_size))
    with torch.inference_mode():
        expected = system(images)
        for path in (ckpt, pt):
            plain = load_model(path).eval()
            assert type(plain) is type(system.model)
            assert torch.equal(plain(images), expected)
            assert torch.equal(load_from_checkpoint(path).eval()(images), expected)
    fresh = create_model(experiment)
    load_weights(fresh, ckpt)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), system.state_dict().values()))


def test_fine_tuning_refuses_another_family(tmp_path):
    ckpt, _ = _save(create_model("parseq-mini"), tmp_path, "model")
    with pytest.raises(InvalidCheckpointError, match="is a parseq checkpoint; the model being trained is vl4str"):
        load_weights(create_model("tiny"), ckpt)


def test_plain_state_dicts_take_unreadable_settings_from_the_matching_config(tmp_path):
    torch.manual_seed(0)
    system = create_model("parseq-mini").eval()
    _, pt = _save(system, tmp_path, "mini")
    model = load_model(pt)
    assert model.encoder.blocks[0].attn.num_heads == 2 and model.layers[0].self_attn.num_heads == 4
    assert load_model(pt, dec_num_heads=8).layers[0].self_attn.num_heads == 8  # overrides win
    with torch.device("meta"):
        released = create_model("parseq-tiny").model  # the layout of parseq_tiny-e7a21b54.pt
    path = tmp_path / "parseq_tiny.pt"
    torch.save({k: torch.zeros(v.shape) for k, v in released.state_dict().items()}, path)
    tiny = load_model(path)
    assert tiny.encoder.blocks[0].attn.num_heads == 3 and tiny.layers[0].self_attn.num_heads == 6


def test_unknown_plain_state_dicts_say_which_override_to_give(tmp_path):
    torch.manual_seed(0)
    system = create_model("parseq-mini", embed_dim=80, enc_num_heads=5).eval()  # 80 wide: the defaults 6 / 12 don't fit
    _, pt = _save(system, tmp_path, "odd")
    with pytest.warns(UserWarning, match="matches no experiment config; assuming enc_num_heads=6"):
        with pytest.raises(InvalidCheckpointError, match="enc_num_heads=\\.\\.\\., dec_num_heads=\\.\\.\\."):
            load_model(pt)
    with torch.inference_mode():
        loaded = load_model(pt, enc_num_heads=5, dec_num_heads=4).eval()
        assert torch.equal(loaded(_images()), system(_images()))
    ladder = create_model("str_adapter-mini", adapter_type="ladder", block_ids=[2, 1])
    _, pt = _save(ladder, tmp_path, "ladder")
    with pytest.raises(InvalidCheckpointError, match="block_ids=\\.\\.\\."):
        load_model(pt)
    assert load_model(pt, block_ids=[2, 1]).adapter.block_ids == [2, 1]


@pytest.mark.parametrize("adapter_type", ADAPTER_TYPES)
def test_str_adapter_trains_only_its_adapter_and_decoder(adapter_type):
    torch.manual_seed(0)
    system = _fake_trainer(create_model("str_adapter-mini", adapter_type=adapter_type, block_ids=[0, 2]))
    clip_before = {k: v.clone() for k, v in system.model.clip_model.state_dict().items()}
    rest_before = {k: v.clone() for k, v in system.model.state_dict().items() if not k.startswith("clip_model.")}
    optimizer = system.configure_optimizers()["optimizer"]
    system.train()
    assert not system.model.clip_model.training and not any(p.requires_grad for p in system.model.clip_model.parameters())
    loss = system.training_step((_images(4), ["ab", "word", "Hello", "x1"]), 0)
    loss.backward()
    assert all(p.grad is None for p in system.model.clip_model.parameters())
    optimizer.step()
    assert all(torch.equal(v, clip_before[k]) for k, v in system.model.clip_model.state_dict().items())
    changed = [k for k, v in system.model.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert any(k.startswith("adapter.") for k in changed) and any(k.startswith("decoder.") for k in changed)


def test_ladder_adapters_leave_no_hooks_and_copy_cleanly():
    torch.manual_seed(0)
    model = create_model("str_adapter-mini", adapter_type="ladder", block_ids=[0, 2]).model.eval()
    images = _images()
    with torch.inference_mode():
        expected = model(images)
        other = create_model("str_adapter-mini", adapter_type="ladder", block_ids=[1]).model.eval()  # a second model
        other(images)
        assert torch.equal(model(images), expected)
        assert torch.equal(copy.deepcopy(model)(images), expected)
        assert torch.equal(pickle.loads(pickle.dumps(model))(images), expected)
    blocks = model.clip_model.visual.transformer.resblocks
    assert not any(block._forward_hooks or block._forward_pre_hooks for block in blocks)


def test_pruned_ladder_starts_from_the_largest_rows_of_clip():
    torch.manual_seed(0)
    model = create_model("str_adapter-mini", adapter_type="ladder_pruning", block_ids=[1], prune_reduction=4).model
    clip_block, side = model.clip_model.visual.transformer.resblocks[1], model.adapter.resblocks[0]
    width = clip_block.attn.embed_dim
    query = clip_block.attn.in_proj_weight[:width]
    kept = query.norm(p=1, dim=1).topk(width // 4).indices.sort().values
    assert torch.equal(side.attn.in_proj_weight[:width // 4], query[kept])
    assert side.attn.in_proj_weight.shape == (3 * width // 4, width) and side.mlp.c_fc.weight.shape == (width, width)
    assert torch.equal(side.ln_1.weight, clip_block.ln_1.weight)


def _group_sizes(groups):
    return [len(group["params"]) for group in groups]


def test_optimizer_groups_and_learning_rates():
    str_adapter = _fake_trainer(create_model("str_adapter-mini", adapter_type="ladder_pruning", lr=1e-3,
                                             batch_size=64), world_size=4, accumulate=2)
    groups = str_adapter.configure_optimizers()["optimizer"].param_groups
    lr = 1e-3 * 2 * math.sqrt(4) * 64 / 256  # PARSeq's square-root rule
    assert [g["max_lr"] for g in groups] == pytest.approx([lr, lr, 4 * lr, 4 * lr])
    assert groups[0]["params"] and groups[1]["params"]  # the ladder trains at the encoder's rate
    linear = _fake_trainer(create_model("str_adapter-mini", adapter_type="linear"))
    linear_groups = linear.configure_optimizers()["optimizer"].param_groups
    assert _group_sizes(linear_groups)[:2] == [0, 0]  # ... the other adapters with the decoder
    decoder_tensors = len([k for k in linear.model.state_dict() if not k.startswith("clip_model.")])
    assert sum(_group_sizes(linear_groups)) == decoder_tensors
    parseq = _fake_trainer(create_model("parseq-mini", lr=1e-3, batch_size=64, weight_decay=0.1), world_size=4)
    parseq_groups = parseq.configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in parseq_groups] == [0.0, 0.1]
    no_decay = {id(p) for p in parseq_groups[0]["params"]}
    assert id(parseq.model.pos_queries) in no_decay and id(parseq.model.encoder.pos_embed) in no_decay
    assert id(parseq.model.head.weight) not in no_decay
    assert [g["max_lr"] for g in parseq_groups] == pytest.approx([1e-3 * math.sqrt(4) * 64 / 256] * 2)


def test_parseq_memory_has_one_token_per_patch():
    model = create_model("parseq-mini").model.eval()
    assert model.encode(_images(2)).shape == (2, (32 // 4) * (128 // 8), 128)
    assert model.image_size == (32, 128)


@pytest.mark.parametrize("decode_ar, refine_iters", [(True, 0), (True, 2), (False, 1)])
def test_decoding_modes_of_the_parseq_layout(decode_ar, refine_iters):
    torch.manual_seed(0)
    for experiment in ("parseq-mini", "str_adapter-mini"):
        model = create_model(experiment, decode_ar=decode_ar, refine_iters=refine_iters).model.eval()
        with torch.inference_mode():
            logits = model(_images(2))
        assert logits.shape[0] == 2 and logits.shape[2] == len(model.tokenizer) - 2
        if refine_iters or not decode_ar:
            assert logits.shape[1] == model.max_label_length + 1
