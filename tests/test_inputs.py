"""The findings of issue 25: every bad input gets one clear line naming it, and nothing is lost (test.py's reports,
read-only folders, filtered-out benchmarks)."""
import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TEST_IMAGES
from entry_points import one_line_error, run_script
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
        assert "--output DIR" in outcome.err and outcome.status == 1


def test_test_py_where_every_label_is_filtered_out_says_so_in_one_line(checkpoint: Path, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    image = (TEST_IMAGES / "labels.tsv").read_text().split("\t")[0]
    write_lmdb(tmp_path / "test" / "SVT", [((TEST_IMAGES / image).read_bytes(), "###")] * 3)
    outcome = run_script("test.py", [checkpoint, "--data_root", tmp_path, *TEST_ARGS], monkeypatch, capsys)
    assert "no benchmark under" in one_line_error(outcome) and "label filtering" in outcome.err
    assert outcome.status == 2
