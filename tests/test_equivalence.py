"""Numerical equivalence with the official CLIP4STR (VamosC/CLIP4STR @ 7497c15).

A tiny CLIP4STR (tests/reference/weights.py) is written as a plain state dict (.pt) and as a
Lightning-style checkpoint (.ckpt), loaded with our `load_from_checkpoint`, and run on 24 small
images (tests/reference/images). The outputs are compared with those the official code produced for
the same weights and images (tests/reference/original_outputs.pt; see tests/reference/README.md for
how it is regenerated):

* test mode (`model(images)`, early stop + refinement): logits of the batch of 24 and of each image
  alone (the batch-level early stop makes some results depend on the batch), decoded strings and
  confidences, with charset_test = 36 lowercase and 94 full;
* validation mode (`model(images, 7)`) logits;
* the `training_step` loss (dropout 0, perm_num 2, whose permutations are deterministic) on label sets
  whose longest label has 20, 1, 3 and 25 characters.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
LOGIT_ATOL = 1e-4
CONFIDENCE_ATOL = 1e-5
LOSS_ATOL = 1e-4


def _load_weights_module():
    spec = importlib.util.spec_from_file_location("clip4str_fixture_weights", REFERENCE_DIR / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


weights = _load_weights_module()
CHARSETS = {36: weights.CHARSET_36, 94: weights.CHARSET_94}


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_DIR / "original_outputs.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    pt_path, ckpt_path = weights.write_weights(tmp_path_factory.mktemp("clip4str_tiny"))
    return {"pt": pt_path, "ckpt": ckpt_path}


def _transform():
    from strhub.data.transforms import get_transform
    return get_transform((weights.IMAGE_SIZE, weights.IMAGE_SIZE))


@pytest.fixture(scope="module")
def images(reference):
    try:
        transform = _transform()
    except ImportError:  # data module not there yet: the same transform with torchvision
        import torchvision.transforms as T
        transform = T.Compose([T.Resize((weights.IMAGE_SIZE, weights.IMAGE_SIZE), T.InterpolationMode.BICUBIC),
                               T.ToTensor(), T.Normalize(0.5, 0.5)])
    paths = [REFERENCE_DIR / "images" / name for name in reference["image_names"]]
    return torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])


def _load(path, **overrides):
    from strhub.models.utils import load_from_checkpoint
    return load_from_checkpoint(str(path), **overrides)


@pytest.fixture(scope="module")
def models(checkpoint_files):
    """Inference models, cached per (file format, charset_test size)."""
    cache = {}

    def get(fmt, charset):
        if (fmt, charset) not in cache:
            cache[(fmt, charset)] = _load(checkpoint_files[fmt], charset_test=CHARSETS[charset]).eval()
        return cache[(fmt, charset)]
    return get


def _decode(model, logits):
    strings, probs = model.tokenizer.decode(logits.softmax(-1))
    return strings, torch.tensor([float(p.double().prod()) for p in probs], dtype=torch.float64)


def _assert_logits(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected).abs()
    worst = diff.flatten().argmax()
    assert float(diff.max()) <= LOGIT_ATOL, (
        f"{what}: max |diff| {float(diff.max()):.3g} at {tuple(int(i) for i in torch.unravel_index(worst, diff.shape))}")


def _assert_decoded(model, logits, ref, prefix, what):
    strings, confidences = _decode(model, logits)
    assert strings == ref[f"{prefix}_strings"], what
    torch.testing.assert_close(confidences, torch.tensor(ref[f"{prefix}_confidences"], dtype=torch.float64),
                               atol=CONFIDENCE_ATOL, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def test_fixture_is_current(reference):
    """The stored outputs belong to the weights that weights.py makes now."""
    state_dict = weights.make_state_dict()
    layout = [(key, list(shape)) for key, shape in reference["state_dict_layout"]]
    assert [(key, list(value.shape)) for key, value in state_dict.items()] == layout
    for key, value in state_dict.items():
        assert value.dtype == torch.float32
        expected = reference["weights_checksums"][key]
        assert abs(float(value.double().sum()) - expected) <= 1e-6 * max(1.0, abs(expected)), (
            f"{key} changed: regenerate tests/reference/original_outputs.pt (tests/reference/README.md)")


def test_checkpoint_container(checkpoint_files):
    ckpt = torch.load(checkpoint_files["ckpt"], map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step"}
    assert list(ckpt["state_dict"]) == list(torch.load(checkpoint_files["pt"], weights_only=True))
    assert ckpt["hyper_parameters"]["charset_train"] == weights.CHARSET_94


def test_transform_matches_original(reference):
    transform = _transform()
    for name, total, abs_total in zip(reference["image_names"], reference["image_sums"], reference["image_abs_sums"]):
        image = transform(Image.open(REFERENCE_DIR / "images" / name).convert("RGB")).double()
        assert tuple(image.shape) == (3, weights.IMAGE_SIZE, weights.IMAGE_SIZE)
        assert abs(float(image.sum()) - float(total)) < 1e-2, name
        assert abs(float(image.abs().sum()) - float(abs_total)) < 1e-2, name


@pytest.mark.parametrize("fmt", ["ckpt", "pt"])
@pytest.mark.parametrize("charset", [36, 94])
def test_test_mode_batch(models, images, reference, fmt, charset):
    model, ref = models(fmt, charset), reference["test"][charset]
    with torch.inference_mode():
        logits = model(images)
    what = f"{fmt}, charset {charset}, batch of {len(images)}"
    _assert_logits(logits, ref["batch_logits"], what)
    _assert_decoded(model, logits, ref, "batch", what)


@pytest.mark.parametrize("charset", [36, 94])
def test_test_mode_alone(models, images, reference, charset):
    model, ref = models("ckpt", charset), reference["test"][charset]
    with torch.inference_mode():
        logits = [model(images[i:i + 1]) for i in range(len(images))]
    for i, single in enumerate(logits):
        _assert_logits(single[0], ref["alone_logits"][i], f"charset {charset}, image {i} alone")
    _assert_decoded(model, torch.cat(logits), ref, "alone", f"charset {charset}, images alone")


def test_batch_coupling_is_exercised(reference):
    """The fixture is only useful if the batch-level early stop changes some outputs."""
    for ref in reference["test"].values():
        assert ref["batch_strings"] != ref["alone_strings"]
        assert min(ref["alone_ar_steps"]) < ref["batch_ar_steps"] < weights.MAX_LABEL_LENGTH + 1


@pytest.mark.parametrize("charset", [36, 94])
def test_validation_mode(models, images, reference, charset):
    ref = reference["val"][charset]
    with torch.inference_mode():
        logits = models("ckpt", charset)(images, ref["max_length"])
    _assert_logits(logits, ref["logits"], f"charset {charset}, validation forward(images, {ref['max_length']})")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("charset", [36, 94])
def test_training_loss(checkpoint_files, images, reference, charset):
    model = _load(checkpoint_files["ckpt"], charset_test=CHARSETS[charset], dropout=0.0, perm_num=2)
    model.train()
    for name, ref in reference["train"][charset].items():
        out = model.training_step((images, list(ref["labels"])), 0)
        loss = float((out["loss"] if isinstance(out, dict) else out).detach())
        assert abs(loss - ref["loss"]) <= LOSS_ATOL, f"charset {charset}, labels {name}: {loss} != {ref['loss']}"
