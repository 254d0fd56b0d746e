"""Numerical equivalence with the original STR-Adapter and PARSeq (VamosC/CLIP4STR @ 7497c15, baudm/parseq @ 1902db0).

Tiny models of every adapter type and of PARSeq (tests/reference/family_weights.py) are written as plain state
dicts (.pt) and Lightning-style checkpoints (.ckpt), loaded with our loaders, and run on the 24 fixture images.
The outputs are compared with those the original code produced on the same weights (tests/reference/
str_adapter_outputs.pt and parseq_outputs.pt; tests/reference/README.md says how they were made): test-mode
logits for the batch and for each image alone, strings and confidences; validation mode; NAR decoding with
refinement; zero and two refinement passes; the deterministic training loss and its permutations; and the
initialisation of the ladder adapters from CLIP.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from strhub.data.transforms import get_transform
from strhub.models.checkpoint import load_model
from strhub.models.registry import FAMILIES
from strhub.models.utils import create_model, load_from_checkpoint

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
LOGIT_ATOL = 1e-4
CONFIDENCE_ATOL = 1e-5
LOSS_ATOL = 1e-4


def _load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"fixture_{name}", REFERENCE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


family_weights = _load_module("family_weights")
VARIANTS = family_weights.VARIANTS
CHARSETS = {36: family_weights.CHARSET_36, 94: family_weights.CHARSET_94}
FAMILY = {variant: "str_adapter" if variant.startswith("str_adapter") else "parseq" for variant in VARIANTS}


@pytest.fixture(scope="module")
def references():
    files = set(family_weights.OUTPUT_FILES.values())
    outputs = {}
    for name in files:
        outputs.update(torch.load(REFERENCE_DIR / name, map_location="cpu", weights_only=True))
    return outputs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    written = family_weights.write_weights(tmp_path_factory.mktemp("families"))
    return {variant: {"pt": pt, "ckpt": ckpt} for variant, (pt, ckpt) in written.items()}


def _unreadable(variant):
    """What a plain state dict cannot tell, as the user passes it: the settings the original trained with."""
    hparams = family_weights.make_hyper_parameters(variant)
    return {key: hparams[key] for key in FAMILIES[FAMILY[variant]].unreadable if key in hparams}


def _load(files, variant, fmt, loader=load_model, **overrides):
    if fmt == "pt":
        overrides = {**_unreadable(variant), **overrides}
    return loader(files[variant][fmt], **overrides).eval()


@pytest.fixture(scope="module")
def images(references):
    cache = {}

    def get(variant):
        if variant not in cache:
            transform = get_transform(family_weights.image_size(variant))
            names = references[variant]["image_names"]
            cache[variant] = torch.stack([transform(Image.open(REFERENCE_DIR / "images" / n).convert("RGB"))
                                          for n in names])
        return cache[variant]
    return get


def _assert_logits(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = float((actual.float() - expected).abs().max())
    assert diff <= LOGIT_ATOL, f"{what}: max |diff| {diff:.3g}"


def _assert_decoded(model, logits, strings, confidences, what):
    decoded, probs = model.tokenizer.decode(logits.softmax(-1))
    assert decoded == strings, what
    ours = torch.tensor([float(p.double().prod()) for p in probs], dtype=torch.float64)
    torch.testing.assert_close(ours, torch.tensor(confidences, dtype=torch.float64), atol=CONFIDENCE_ATOL, rtol=1e-5,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_is_current(references, variant):
    state_dict = family_weights.make_state_dict(variant)
    ref = references[variant]
    assert [(k, list(v.shape)) for k, v in state_dict.items()] == [(k, list(s)) for k, s in ref["state_dict_layout"]]
    for key, value in state_dict.items():
        expected = ref["weights_checksums"][key]
        assert abs(float(value.double().sum()) - expected) <= 1e-6 * max(1.0, abs(expected)), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_transform_matches_original(references, images, variant):
    ref = references[variant]
    sums = images(variant).double().flatten(1)
    torch.testing.assert_close(sums.sum(1), ref["image_sums"].double(), atol=1e-2, rtol=0)
    torch.testing.assert_close(sums.abs().sum(1), ref["image_abs_sums"].double(), atol=1e-2, rtol=0)


@pytest.mark.parametrize("fmt", ["ckpt", "pt"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_test_mode(files, references, images, variant, fmt):
    """The batch with either test charset, and each image alone (with the full one: these families' logits
    do not depend on the test charset, which only maps predictions for scoring)."""
    x = images(variant)
    for charset, ref in references[variant]["test"].items():
        model = _load(files, variant, fmt, charset_test=CHARSETS[charset])
        what = f"{variant} {fmt} charset {charset}"
        with torch.inference_mode():
            batch = model(x)
            _assert_logits(batch, ref["batch_logits"], f"{what}, batch")
            _assert_decoded(model, batch, ref["batch_strings"], ref["batch_confidences"], f"{what}, batch")
            if charset == 94:
                alone = [model(x[i:i + 1]) for i in range(len(x))]
                for i, single in enumerate(alone):
                    _assert_logits(single[0], ref["alone_logits"][i], f"{what}, image {i} alone")
                _assert_decoded(model, torch.cat(alone), ref["alone_strings"], ref["alone_confidences"],
                                f"{what}, alone")


@pytest.mark.parametrize("variant", VARIANTS)
def test_validation_nar_and_refinement_passes(files, references, images, variant):
    x, ref = images(variant), references[variant]
    with torch.inference_mode():
        val = ref["val"][94]
        _assert_logits(_load(files, variant, "ckpt")(x, val["max_length"]), val["logits"], f"{variant} validation")
        for key, overrides in (("nar", {"decode_ar": False, "refine_iters": 1}), ("refine0", {"refine_iters": 0}),
                               ("refine2", {"refine_iters": 2})):
            model, expected = _load(files, variant, "pt", **overrides), ref[key][94]
            logits = model(x)
            _assert_logits(logits, expected["batch_logits"], f"{variant} {key}")
            _assert_decoded(model, logits, expected["batch_strings"], expected["batch_confidences"], f"{variant} {key}")
        model, expected = _load(files, variant, "ckpt", refine_iters=0), ref["refine0"][94]
        for i in range(len(x)):  # the early stop is each image's own
            _assert_logits(model(x[i:i + 1])[0], expected["alone_logits"][i], f"{variant} refine0, image {i} alone")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_loss(files, references, images, variant):
    x = images(variant)
    for charset, sets in references[variant]["train"].items():
        system = load_from_checkpoint(files[variant]["ckpt"], charset_test=CHARSETS[charset], dropout=0.0, perm_num=2)
        system.train()
        for name, ref in sets.items():
            labels = list(ref["labels"])
            assert torch.equal(system.gen_tgt_perms(system.tokenizer.encode(labels)), ref["perms"])
            loss = float(system.training_step((x, labels), 0).detach())
            assert abs(loss - ref["loss"]) <= LOSS_ATOL, f"{variant} charset {charset} labels {name}: {loss} != {ref['loss']}"


@pytest.mark.parametrize("adapter_type", ["ladder", "ladder_pruning"])
def test_ladder_adapters_start_from_clip_as_the_original(references, tmp_path, adapter_type):
    """Built on a pretrained CLIP file, the side network is the original's copy (or L1-pruned copy) of its blocks."""
    variant = f"str_adapter_{adapter_type}"
    clip_file = tmp_path / "clip.pt"
    torch.save({k[len("clip_model."):]: v for k, v in family_weights.make_state_dict(variant).items()
                if k.startswith("clip_model.")}, clip_file)
    hparams = family_weights.make_hyper_parameters(variant)
    model = create_model("str_adapter", clip_pretrained=str(clip_file), adapter_type=adapter_type,
                         block_ids=hparams["block_ids"], prune_reduction=hparams["prune_reduction"],
                         img_size=list(family_weights.image_size(variant))).model
    expected = references[variant]["adapter_init"]
    state_dict = model.adapter.state_dict()
    assert sorted(state_dict) == sorted(expected)
    for key, ref in expected.items():
        value = state_dict[key].double()
        assert list(value.shape) == list(ref["shape"]), key
        index = torch.arange(1, value.numel() + 1, dtype=torch.float64).reshape(value.shape)
        for stat, ours in (("sum", value.sum()), ("abs_sum", value.abs().sum()),
                           ("index_weighted_sum", (value * index).sum())):
            assert abs(float(ours) - ref[stat]) <= 1e-6 * max(1.0, abs(ref[stat])), f"{key} {stat}"
