"""Two nodes of one machine: two train.py processes (gloo on CPUs, MASTER_ADDR=127.0.0.1, NODE_RANK=0 and 1,
trainer.num_nodes=2, trainer.devices=1) train one run. The README's rule: the world size is devices x nodes (2), the
step-based settings are divided by it, and the learning rate is scaled by world size x batch x accumulation / 512."""
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from runs import REPO, train_command

from strhub.models.checkpoint import load_model
from strhub.models.safe_load import safe_load

BATCH, MAX_STEPS, NODES = 16, 4, 2
LR, COEF_LR = 8e-3, 4.0  # configs/experiment/tiny.yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_scale_the_steps_and_the_learning_rate_as_the_readme_says(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "two-nodes"
    command = train_command(data_root, run_dir, f"trainer.num_nodes={NODES}", f"trainer.max_steps={MAX_STEPS}",
                            "trainer.max_epochs=-1", "test_after_train=false", "seed=0")
    port = free_port()
    nodes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "NODE_RANK": str(rank)})
             for rank in range(NODES)]
    try:  # a node that waits for a peer that failed would wait for ever
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{output[-4000:]}"
    assert "Training ended at step 2 of 2: trainer.max_steps=2 reached" in outputs[0]  # 4 // world size 2
    assert "Training ended" not in outputs[1] and "Run folder" not in outputs[1]  # node 1 writes nothing of the run
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = safe_load(last)
    assert checkpoint["global_step"] == MAX_STEPS // NODES
    peak = LR * NODES * BATCH * 1 / 512  # world size x batch x accumulation / 512
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [group["max_lr"] for group in groups] == pytest.approx([peak, peak, peak * COEF_LR, peak * COEF_LR])
    assert checkpoint["lr_schedulers"][0]["total_steps"] == MAX_STEPS // NODES
    loaded = load_model(last).state_dict()  # the checkpoint loads back, with the weights the run saved
    assert loaded and all(torch.equal(value, checkpoint["state_dict"][f"model.{key}"]) for key, value in loaded.items())
    best = run_dir / "checkpoints" / "epoch=0-step=1-val_accuracy=0.0000-val_NED=0.0000.ckpt"  # validation every 2 // 2
    assert sorted((run_dir / "checkpoints").iterdir()) == [best, last]
