"""The findings of issue 25: every bad input gets one clear line naming it, and nothing is lost (test.py's reports in
read-only folders, filtered-out benchmarks, numeric options, overrides, devices, boolean spellings, charset files)."""
import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch
from conftest import TEST_IMAGES
from entry_points import REPO, one_line_error, run_script
from runs import train_command

from strhub.app.common import parse_model_args
from strhub.keys import ConfigError
from strhub.tools.create_lmdb import write_lmdb


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """`folder`, made read-only for this process: by its mode, or for root (whom modes do not stop) by a tmpfs mounted
    over it and remounted read-only, as a released checkpoint on a read-only mount is."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    kept = folder.with_name(folder.name + ".files")
    shutil.copytree(folder, kept)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], check=True)
    try:
        shutil.copytree(kept, folder, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def svt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    write_lmdb(root / "test" / "SVT", [((TEST_IMAGES / name).read_bytes(), label)
                                      for name, label in (line.split("\t") for line in lines)])
    return root


TEST_ARGS = ["--device", "cpu", "--num_workers", 0, "--batch_size", 4, "--datasets", "SVT"]


def test_test_py_prints_the_table_then_writes_the_reports_where_it_can(checkpoint: Path, svt_root: Path, tmp_path: Path,
                                                                     monkeypatch, capsys, caplog) -> None:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(checkpoint, release / "tiny.ckpt")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with read_only_folder(release):
        outcome = run_script("test.py", [release / "tiny.ckpt", "--data_root", svt_root, *TEST_ARGS],
                             monkeypatch, capsys)
        assert outcome.status == 0, outcome.err
        assert "| SVT      |        10 |" in outcome.out
        warning = caplog.text  # logging's warning line (on stderr outside pytest)
        assert re.search(rf"cannot write the reports to {re.escape(str(release))} \((Read-only file system|Permission "
                         rf"denied)\)", warning)
        assert f"written to {work} instead" in warning
        assert sorted(path.suffix for path in work.glob("tiny.ckpt.log_datasets_SVT.*")) == [".csv", ".json", ".md"]
        chosen = tmp_path / "reports" / "here"
        outcome = run_script("test.py", [release / "tiny.ckpt", "--data_root", svt_root, *TEST_ARGS,
                                         "--output", chosen], monkeypatch, capsys)
        assert outcome.status == 0 and len(list(chosen.glob("tiny.ckpt.log_datasets_SVT.*"))) == 3
        outcome = run_script("test.py", [release / "tiny.ckpt", "--data_root", svt_root, *TEST_ARGS,
                                         "--output", release / "reports"], monkeypatch, capsys)
        assert "| SVT      |        10 |" in outcome.out  # the table is printed before the reports are written
        assert f"cannot write the reports to {release / 'reports'}" in one_line_error(outcome)
        assert "--output DIR" in outcome.err and outcome.status == 2


def test_test_py_where_every_label_is_filtered_out_says_so_in_one_line(checkpoint: Path, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    image = (TEST_IMAGES / "labels.tsv").read_text().split("\t")[0]
    write_lmdb(tmp_path / "test" / "SVT", [((TEST_IMAGES / image).read_bytes(), "###")] * 3)
    outcome = run_script("test.py", [checkpoint, "--data_root", tmp_path, *TEST_ARGS], monkeypatch, capsys)
    assert "no benchmark under" in one_line_error(outcome) and "label filtering" in outcome.err
    assert outcome.status == 2


@pytest.mark.parametrize("script, option, value", [
    ("read.py", "--batch_size", "0"), ("read.py", "--batch_size", "-1"), ("read.py", "--batch_size", "two"),
    ("test.py", "--batch_size", "0"), ("test.py", "--num_workers", "-1"), ("explain.py", "--batch_size", "0")])
def test_numeric_options_are_checked_with_one_line_naming_them(script: str, option: str, value: str,
                                                               checkpoint: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    args = {"read.py": [checkpoint, TEST_IMAGES], "test.py": [checkpoint, "--data_root", tmp_path],
            "explain.py": [checkpoint, TEST_IMAGES, "--out", tmp_path / "out"]}[script]
    outcome = run_script(script, [*args, option, value], monkeypatch, capsys)
    line = one_line_error(outcome)
    assert f"argument {option}: " in line and ("must be at least" in line or f"expected an integer, got '{value}'" in line)
    assert outcome.status == 2 and not (tmp_path / "out").exists()


def test_explain_py_names_a_misspelt_override_and_a_device_it_cannot_use(checkpoint: Path, tmp_path: Path,
                                                                          monkeypatch, capsys) -> None:
    args = [checkpoint, TEST_IMAGES, "--out", tmp_path / "out", "--device", "cpu"]
    outcome = run_script("explain.py", [*args, "refine_iter:int=2"], monkeypatch, capsys)
    assert "refine_iter" in one_line_error(outcome) and "refine_iters" in outcome.err
    gpu = "cuda:99" if torch.cuda.is_available() else "cuda"  # a CUDA device this machine does not have
    outcome = run_script("explain.py", [*args, "--device", gpu], monkeypatch, capsys)
    assert f"device '{gpu}'" in one_line_error(outcome)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, expected", [(spelling, True) for spelling in ("true", "True", "1", "yes", "on")]
                         + [(spelling, False) for spelling in ("false", "FALSE", "0", "no", "off")])
def test_boolean_overrides_take_the_usual_spellings(value: str, expected: bool) -> None:
    assert parse_model_args([f"decode_ar:bool={value}"]) == {"decode_ar": expected}


@pytest.mark.parametrize("value", ["maybe", "2", "", "tru"])
def test_other_boolean_spellings_are_refused_naming_the_override(value: str, checkpoint: Path, monkeypatch,
                                                                  capsys) -> None:
    with pytest.raises(ConfigError, match=rf"model override 'decode_ar:bool={value}'.*true/1/yes/on/false/0/no/off"):
        parse_model_args([f"decode_ar:bool={value}"])
    outcome = run_script("read.py", [checkpoint, TEST_IMAGES, f"decode_ar:bool={value}"], monkeypatch, capsys)
    assert f"decode_ar:bool={value}" in one_line_error(outcome)


def test_train_py_with_a_non_ascii_charset_file_ends_with_the_error(data_root: Path, tmp_path: Path) -> None:
    charset = tmp_path / "chars.txt"
    charset.write_text("a\nb\nß\né\n", encoding="utf-8")
    proc = subprocess.run(train_command(data_root, tmp_path / "run", "charset=file", f"charset_file={charset}"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.stdout.strip().splitlines()[-1]
    assert last.endswith("ConfigError: the training charset cannot occur in the labels: it holds 2 non-ASCII "
                         "characters (e.g. 'ßé'), which normalize_unicode=true (NFKD folded to ASCII) deletes from "
                         "every label: set data.normalize_unicode=false to keep labels as written (NFC)")
    assert not (tmp_path / "run").exists()
