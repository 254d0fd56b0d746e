"""`bench.py speed` measures inference and training in fresh processes and prints one line each."""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strhub.models.utils import create_model

REPO = Path(__file__).resolve().parents[1]


def test_bench_speed_reports_every_measurement(tmp_path: Path) -> None:
    output = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, "bench.py", "speed", "--experiment", "tiny", "--batches", "1", "2",
                          "--train-batch", "2", "--warmup", "0", "--repeats", "1", "--json", str(output)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if "batch" in line]
    assert [line.split()[0] for line in lines] == ["inference", "inference", "training"]
    results = json.loads(output.read_text())
    assert [(r["task"], r["batch"]) for r in results] == [("inference", 1), ("inference", 2), ("training", 2)]
    for result in results:
        assert 0 < result["encoder_seconds"] < result["seconds"]
        assert result["encoder_seconds"] + result["after_encoder_seconds"] == pytest.approx(result["seconds"])
        assert result["peak_memory_mib"] > 100
        assert result["flops"] > result["encoder_flops"] > 0
        assert set(result["matmul_rates"]) == {"32", "bf16", "int8"} and min(result["matmul_rates"].values()) > 1e8
    assert re.search(r"^matmul rate \(\d+ threads\): fp32 \d+ GFLOP/s, bf16 \d+ GFLOP/s, int8 \d+ GOP/s", run.stdout,
                     re.M)
    assert re.search(r"^inference batch +1: .*encoder .*\(\d+\.\d% of the matmul rate\)", run.stdout, re.M)


def test_a_charset_file_sets_both_charsets_of_random_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from strhub.app.bench import speed as bench_speed

    (tmp_path / "chars.txt").write_text("".join(f"{chr(0x4E00 + i)}\n" for i in range(6000)), encoding="utf-8")
    overrides = bench_speed.charset_overrides(argparse.Namespace(charset_file=str(tmp_path / "chars.txt")))
    assert overrides["charset_train"] == overrides["charset_test"] and len(overrides["charset_train"]) == 6000
    assert bench_speed.charset_overrides(argparse.Namespace(charset_file=None)) == {}
    with pytest.raises(SystemExit):
        bench_speed.main(["--weights", "model.ckpt", "--charset-file", str(tmp_path / "chars.txt")])
def test_bench_speed_measures_a_checkpoint_of_another_family(tmp_path: Path) -> None:
    torch.manual_seed(0)
    system = create_model("str_adapter-mini")
    weights = tmp_path / "adapter.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, weights)
    run = subprocess.run([sys.executable, "bench.py", "speed", "--weights", str(weights), "--batches", "2",
                          "--train-batch", "0", "--warmup", "0", "--repeats", "1", "--precision", "bf16"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^inference batch +2: .*encoder .*after encoder", run.stdout, re.M)
    assert "the fractions below are of bf16's" in run.stdout


def test_training_labels_take_their_lengths_from_a_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from strhub.app.bench import speed as bench_speed
    from strhub.tools.create_lmdb import write_lmdb

    write_lmdb(tmp_path / "train" / "a", [(b"img", "ab"), (b"img", "abcdef")])
    write_lmdb(tmp_path / "train" / "b", [(b"img", "北京")])
    assert sorted(bench_speed.dataset_label_lengths(str(tmp_path / "train"))) == [2, 2, 6]
    (tmp_path / "labels.txt").write_text("word\n\nαθήνα\n", encoding="utf-8")
    assert bench_speed.dataset_label_lengths(str(tmp_path / "labels.txt")) == [4, 5]
    with pytest.raises(SystemExit, match="no labels there"):
        bench_speed.dataset_label_lengths(str(tmp_path / "labels-elsewhere"))

    labels = bench_speed.training_labels("xyz", 64, 5, seed=0, lengths=[2, 6])
    assert {len(label) for label in labels} == {2, 5} and set("".join(labels)) <= set("xyz")
    uniform = bench_speed.training_labels("xyz", 64, 5, seed=0)
    assert len(uniform[0]) == 5 and {len(label) for label in uniform} == {1, 2, 3, 4, 5}


def test_bad_paths_end_it_with_one_line_before_any_measurement(tmp_path: Path) -> None:
    for option, message in (("--lengths-from", "no labels there"), ("--weights", "no such file")):
        command = [sys.executable, "bench.py", "speed", "--experiment", "tiny", option, str(tmp_path / "no")]
        run = subprocess.run(command,
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
