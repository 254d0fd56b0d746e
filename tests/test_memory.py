"""Activation checkpointing, sharded and replicated checkpoints, the memory planner and the compiled training step,
on the small configs."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from torch import Tensor

from strhub.config import model_config
from strhub.keys import ConfigError
from strhub.models.clip_blocks import ClipBlock
from strhub.models.utils import create_model
from strhub.training.measure import training_labels
from strhub.training.planner import (
    ModelSizes,
    Planner,
    StepMemory,
    TrainingPlan,
    measure_step,
    plan_of,
    step_memory,
    training_plan_line,
)
from strhub.training.profile import DECODER, ENCODER, saved_tensors
from strhub.training.strategies import check_strategy, training_strategy

REPO = Path(__file__).resolve().parents[1]
FAMILIES = [("tiny", {}), ("str_adapter-mini", {}), ("str_adapter-mini", {"adapter_type": "attention"}),
            ("parseq-mini", {})]


def _batch(system, size: int = 4):
    height, width = system.hparams.img_size
    images = torch.rand(size, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return images, ["word", "a", "Hello", "x1y2z3"][:size]


def _loss_and_gradients(system, batch) -> Tuple[Tensor, Dict[str, Tensor]]:
    system.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the permutations and the dropout masks
    loss = system.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in system.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("experiment, overrides", FAMILIES)
def test_checkpointing_keeps_the_loss_and_every_gradient_and_saves_activations(experiment, overrides):
    torch.manual_seed(0)
    system = create_model(experiment, **overrides).train()
    batch = _batch(system)
    loss, gradients = _loss_and_gradients(system, batch)
    params = list(system.parameters())
    with saved_tensors(params, {}) as plain:
        torch.manual_seed(2)
        system.training_step(batch, 0)
    system.model.set_grad_checkpointing(True, True)
    checkpointed_loss, checkpointed = _loss_and_gradients(system, batch)
    with saved_tensors(params, {}) as recomputed:
        torch.manual_seed(2)
        system.training_step(batch, 0)

    assert torch.allclose(checkpointed_loss, loss, rtol=1e-5, atol=0)
    assert checkpointed.keys() == gradients.keys() and len(gradients) > 10
    for name, grad in gradients.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-5, atol=1e-7 * grad.abs().max()), name
    assert recomputed.bytes(recomputed.outside) < plain.bytes(plain.outside) / 2


def test_frozen_text_layers_stay_frozen_when_checkpointed():
    torch.manual_seed(0)
    system = create_model("tiny", grad_checkpointing=True, grad_checkpointing_decoder=True).train()
    text_blocks = system.model.clip_model.transformer.resblocks
    frozen = [p for block in text_blocks[:1] for p in block.parameters()]
    before = [p.detach().clone() for p in frozen]
    optimizer = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad], lr=1e-2)
    _, gradients = _loss_and_gradients(system, _batch(system))
    optimizer.step()
    assert text_blocks[0] in system.model.text_frozen_modules and text_blocks[1] not in system.model.text_frozen_modules
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(torch.equal(p, old) for p, old in zip(frozen, before))
    assert any(name.startswith("model.clip_model.transformer.resblocks.1.") for name in gradients)


def test_the_config_key_turns_checkpointing_on_for_each_family():
    clip4str = create_model("tiny", grad_checkpointing=True).model
    assert clip4str.clip_model.visual.transformer.grad_checkpointing and clip4str.clip_model.transformer.grad_checkpointing
    assert not clip4str.visual_decoder.grad_checkpointing
    adapter = create_model("str_adapter-mini", grad_checkpointing=True, grad_checkpointing_decoder=True).model
    assert adapter.adapter.grad_checkpointing and adapter.grad_checkpointing
    parseq = create_model("parseq-mini", grad_checkpointing=True).model
    assert parseq.encoder.grad_checkpointing and not parseq.grad_checkpointing


def test_meta_profile_counts_what_a_real_step_saves():
    """The meta device's count of the saved activations is that of a real step on a CPU, within 10 %; it splits into
    the blocks' and the decoder layers' shares, and recomputing either keeps less."""
    torch.manual_seed(0)
    real = create_model("tiny", dropout=0.0).train()
    labels = training_labels(real.hparams.charset_train, 4, real.hparams.max_label_length,
                             lengths=[real.hparams.max_label_length])
    tgt = real.tokenizer.encode(labels)
    with saved_tensors(list(real.parameters()), {}) as counted:
        real.permutation_step(_batch(real)[0], tgt, real.gen_tgt_perms(tgt))
    meta = Planner({**model_config("tiny"), "dropout": 0.0}, device_type="cpu").activations(4, "32-true")
    real_bytes = counted.bytes(counted.outside)
    assert abs(meta.kept() - real_bytes) / real_bytes < 0.1
    kinds = {region.kind for region in meta.regions if meta.bytes(region.saved)}
    assert kinds == {ENCODER, DECODER} and meta.bytes(meta.outside) > 0
    assert meta.kept({ENCODER, DECODER}) < meta.kept({ENCODER}) < meta.kept()


def test_strategies_share_the_state_as_they_do():
    sizes = ModelSizes(total=1000, trainable=600, root=100, largest_block=50)
    activations = Planner({**model_config("tiny"), "dropout": 0.0}, device_type="cpu").activations(4, "32-true")
    single = step_memory(sizes, activations, TrainingPlan(4))
    ddp = step_memory(sizes, activations, TrainingPlan(4, strategy="ddp", world_size=4))
    fsdp = step_memory(sizes, activations, TrainingPlan(4, strategy="fsdp", world_size=4))
    assert (single.parameters, single.gradients, single.optimizer) == (4000, 2400, 4800)
    assert not single.gradients_held and ddp.gradients_held
    assert single.total == 4000 + 4800 + max(2400, activations.kept())
    assert (fsdp.parameters, fsdp.gradients, fsdp.optimizer) == (1000, 600, 1200) and fsdp.gathered > 0
    assert isinstance(fsdp, StepMemory) and fsdp.total < ddp.total


def test_plan_of_reads_the_configs_and_names_a_bad_key():
    plan = plan_of({"batch_size": 16, "grad_checkpointing": True}, {"precision": "bf16", "strategy": "fsdp"}, 8)
    assert plan == TrainingPlan(16, "bf16-mixed", "fsdp", 8, grad_checkpointing=True)
    with pytest.raises(ValueError, match="trainer.precision='8'"):
        plan_of({"batch_size": 16}, {"precision": "8", "strategy": "ddp"}, 1)


def test_largest_batch_fits_the_budget_and_the_next_does_not():
    planner = Planner({**model_config("tiny"), "dropout": 0.0}, device_type="cpu")
    plan = TrainingPlan(4, grad_checkpointing=True, grad_checkpointing_decoder=True)
    budget = planner.interpolate(dataclasses.replace(plan, batch_size=20)).total
    assert planner.largest_batch(plan, budget) == 20
    plain = dataclasses.replace(plan, grad_checkpointing=False, grad_checkpointing_decoder=False)
    assert planner.largest_batch(plain, budget) < 20


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_checkpoint_of_a_two_process_run_loads_with_the_live_logits(kind, tmp_path):
    """Two CPU processes (gloo) train the tiny CLIP4STR, replicated by Lightning's DDP or sharded by FSDP over the
    encoder blocks; `load_model` of the checkpoint gives the live model's logits (see tests/two_processes.py)."""
    result = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "two_processes.py"), kind, str(result)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(result.read_text())
    assert found["logits_difference"] < 1e-6
    if kind == "fsdp":
        assert found["same_keys"] and found["loss_difference"] < 1e-6 and found["weight_difference"] < 1e-6


def test_the_config_key_compiles_the_training_step():
    plain = create_model("parseq-mini")
    assert plain.train_loss == plain.permutation_step
    system = create_model("parseq-mini", compile_train_step=True)
    assert system.train_loss != system.permutation_step
    assert system.train_loss._torchdynamo_orig_callable == system.permutation_step


@pytest.mark.slow  # compiling the forward and backward graphs takes about a minute on a CPU
def test_compiled_training_step_gives_the_same_loss():
    torch.manual_seed(0)
    system = create_model("parseq-mini", dropout=0.0).train()
    batch = _batch(system, 2)
    loss, gradients = _loss_and_gradients(system, batch)
    system.set_training_options(False, False, compile_train_step=True)
    compiled_loss, compiled = _loss_and_gradients(system, batch)
    assert torch.allclose(compiled_loss, loss, rtol=1e-5)
    for name, grad in gradients.items():
        assert torch.allclose(compiled[name], grad, rtol=1e-4, atol=1e-6 * grad.abs().max()), name


def test_strategies_are_set_up_for_the_model_or_refused_with_the_key():
    system = create_model("tiny")
    fsdp = training_strategy("fsdp", "gpu", 2, system)
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["use_orig_params"]
    assert fsdp._state_dict_type == "full"
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {ClipBlock}
    ddp = training_strategy("ddp", "cpu", 2, system)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"]
    assert training_strategy("auto", "cpu", 1, system) == "auto"
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp needs CUDA"):
        check_strategy("fsdp", "cpu")
    for name in ("deepspeed_stage_2", "deepspeed_stage_3_offload"):
        with pytest.raises(ConfigError, match=rf"^trainer.strategy={name} is not supported: DeepSpeed writes "
                                              r"checkpoints as folders, past the atomic writer and the non-finite"):
            check_strategy(name, "gpu")


def test_the_training_log_line_gives_the_plan_or_says_why_there_is_none():
    model = {**model_config("tiny"), "batch_size": 4, "grad_checkpointing": True}
    line = training_plan_line(model, {"precision": "32", "strategy": "ddp"}, 2)
    assert line.startswith("Memory plan per GPU (batch 4 per GPU, precision 32-true, ddp over 2 processes, "
                           "activation checkpointing: encoder), estimated: parameters ")
    assert line.endswith(" GiB") and "activations" in line
    assert training_plan_line(model, {"precision": "32", "strategy": "ddp_fork"}, 2) == (
        "Memory plan: none for trainer.strategy='ddp_fork': memory is planned for auto, ddp, ddp_spawn, fsdp")


def test_the_estimated_activations_are_those_of_a_measured_step():
    """A real training step of the tiny CLIP4STR in a fresh process keeps the activations the meta device counts."""
    settings = {**model_config("tiny"), "dropout": 0.0}
    plan = TrainingPlan(32)
    measured = measure_step(settings, plan, "cpu", steps=2)
    estimated = Planner(settings, device_type="cpu").estimate(plan)
    assert abs(estimated.activations / measured["activations"] - 1) < 0.15
    assert measured["peak"] > measured["activations"] > 0 and measured["seconds"] > 0


def test_bench_py_prints_the_plan_and_the_largest_batches():
    proc = subprocess.run([sys.executable, "bench.py", "+experiment=tiny", "memory=true", "device=cpu", "measure=false",
                           "trainer.precision=32", "model.batch_size=4", "model.grad_checkpointing=true",
                           "memory_budgets=[1,2]"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == ("Training step of vl4str-tiny: batch 4 per GPU, precision 32-true, one process, "
                        "activation checkpointing: encoder")
    assert lines[1] == "Estimated per cpu (meta device):" and lines[2].split()[0] == "parameters"
    off, on = (line for line in lines if line.startswith("  checkpointing"))
    sizes = [[int(part.split(": ")[1]) for part in line.split(": ", 1)[1].split(", ")] for line in (off, on)]
    assert sizes[0][0] < sizes[0][1] and sizes[0][0] < sizes[1][0]
