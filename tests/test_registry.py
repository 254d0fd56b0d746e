"""Every registered experiment, as timm tests every registered model: its config composes as Hydra composes it, its
family is found from its name, config, model and state dict alike, its training step runs (on the meta device, so
that CLIP4STR-H is checked on any machine), and the small ones run for real: a forward pass, a training step, a
save and a load that gives the same logits."""
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from omegaconf import OmegaConf

from strhub.config import compose, experiments, model_config
from strhub.models.checkpoint import load_model
from strhub.models.registry import Family, build_random, without_weight_files
from strhub.models.utils import load_from_checkpoint
from strhub.training.measure import TrainingStep, training_labels

REAL_RUN_PARAMETERS = 30e6  # experiments up to this size also run for real on the CPU


def parameters(experiment: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_random(experiment).parameters())


SMALL = [name for name in experiments()
         if not model_config(name).get("text_tower") and parameters(name) <= REAL_RUN_PARAMETERS]


def overrides_of(experiment: str, hf_folder: Path) -> Dict[str, Any]:
    overrides = without_weight_files(model_config(experiment))
    if model_config(experiment).get("text_tower"):  # its Hugging Face folder: a tiny one
        overrides["text_tower"] = {"hf_path": str(hf_folder)}
    return overrides


@pytest.mark.parametrize("experiment", experiments())
def test_the_model_section_is_the_one_hydra_composes(experiment: str) -> None:
    hydra = OmegaConf.to_container(compose("main", [f"+experiment={experiment}"]).model, resolve=True)
    assert model_config(experiment) == {key: value for key, value in hydra.items() if not key.startswith("_")}


@pytest.mark.parametrize("experiment", experiments())
def test_every_experiment_trains_on_the_meta_device_and_names_its_family(experiment: str, hf_folder: Path) -> None:
    # transformers builds a Hugging Face tower's CLIP on the CPU whatever the default device: that one runs for real
    meta = not model_config(experiment).get("text_tower")
    with torch.device("meta" if meta else "cpu"):
        system = build_random(experiment, system=True, **overrides_of(experiment, hf_folder))
    family = Family.of(experiment)
    assert Family.of(system) is Family.of(system.model) is Family.of(model_config(experiment)) is family
    assert Family.of({f"model.{key}": value for key, value in system.model.state_dict().items()}) is family
    height, width = system.hparams.img_size
    images = torch.zeros(2, 3, height, width, device="meta" if meta else "cpu")
    length = system.hparams.max_label_length
    targets = system.tokenizer.encode(training_labels(system.hparams.charset_train, 2, length, lengths=[length]),
                                      images.device)
    system.train()
    loss = system.permutation_step(images, targets, system.gen_tgt_perms(targets))
    assert loss.shape == () and loss.requires_grad


def test_the_small_experiments_are_those_of_each_family() -> None:
    assert {Family.of(name).name for name in SMALL} == {"vl4str", "str_adapter", "parseq"}


@pytest.mark.parametrize("experiment", SMALL)
def test_small_experiments_read_train_save_and_load(experiment: str, tmp_path: Path, hf_folder: Path) -> None:
    torch.manual_seed(0)
    system = build_random(experiment, system=True, **overrides_of(experiment, hf_folder))
    height, width = system.hparams.img_size
    images = torch.rand(2, 3, height, width) * 2 - 1
    labels = training_labels(system.hparams.charset_train, 2, 6, seed=1)
    before = [p.detach().clone() for p in system.parameters() if p.requires_grad]
    system.train()
    TrainingStep(system, images, labels)()
    assert any(not torch.equal(b, p) for b, p in zip(before, (p for p in system.parameters() if p.requires_grad)))
    system.eval()
    with torch.inference_mode():
        logits = system(images)
    assert logits.shape[0] == 2 and logits.shape[-1] == len(system.tokenizer) - 2
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, path)
    with torch.inference_mode():
        assert torch.equal(load_from_checkpoint(path).eval()(images), logits)
        assert torch.equal(load_model(path).eval()(images), logits)


def test_test_py_reads_a_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-charset protocol takes its charset from the checkpoint it has read, not from a second reading."""
    from strhub.evaluation.evaluate import evaluate_checkpoint
    from strhub.models import checkpoint

    system = build_random("tiny", system=True)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, path)
    reads = []
    real = checkpoint.safe_load
    monkeypatch.setattr(checkpoint, "safe_load", lambda *args, **kwargs: reads.append(args[0]) or real(*args, **kwargs))
    with pytest.raises(FileNotFoundError, match="none of the benchmarks"):
        evaluate_checkpoint(path, tmp_path / "no_data", full_charset=True, device="cpu")
    assert reads == [path]
