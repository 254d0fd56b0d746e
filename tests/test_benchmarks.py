"""Test groups from configs/test_groups (Union14M-Benchmark, OST, LTB, PARSeq's protocol) and from a user's YAML
file, evaluated with the tiny model on LMDBs named as the benchmarks name their folders; the CSV and JSON reports
and compare_runs."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from strhub.evaluation.evaluate import evaluate_checkpoint
from strhub.evaluation.groups import GroupError, label_lengths, load_groups, select_groups
from strhub.tools import compare_runs
from strhub.tools.create_lmdb import write_lmdb

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "misc" / "test_images"
UNION14M = ["curve", "multi_oriented", "artistic", "contextless", "salient", "multi_words", "general"]
ROWS = ["Curve", "Multi-Oriented", "Artistic", "Contextless", "Salient", "Multi-Words", "General"]


def word_images() -> List[tuple]:
    lines = (TEST_IMAGES / "labels.tsv").read_text().splitlines()
    return [((TEST_IMAGES / name).read_bytes(), label) for name, label in (line.split("\t") for line in lines)]


def table(report: str, group: str) -> Dict[str, List[str]]:
    """The rows of a group's table in a report: label -> cells."""
    block = report.split(f"{group} set:\n", 1)[1].split("\n\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    return {cells[0]: cells[1:] for cells in rows if not cells[0].startswith("-")}


@pytest.fixture(scope="module")
def union_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test/Union14M-Benchmarks/<subset> for the seven subsets (the ten word images spread over them), and LTB."""
    root = tmp_path_factory.mktemp("data")
    images = word_images()
    for number, subset in enumerate(UNION14M):
        write_lmdb(root / "test" / "Union14M-Benchmarks" / subset, images[number:number + 1 + number % 3])
    write_lmdb(root / "test" / "LTB", [(images[0][0], "a" * 40), (images[1][0], "b" * 200)])
    return root


def test_union14m_group_prints_the_seven_rows_and_their_average(checkpoint, union_root, capsys):
    report = evaluate_checkpoint(checkpoint, union_root, device="cpu", num_workers=0, batch_size=4,
                                 groups=["union14m"])
    assert report.startswith("Union14M-Benchmark set:\n")  # none of the common benchmarks is there
    rows = table(report, "Union14M-Benchmark")
    assert list(rows) == ROWS + ["Combined", "Average"]
    neds = [float(rows[name][2]) for name in ROWS]  # (random weights: accuracy 0, but 1 - NED varies)
    assert len(set(neds)) > 2 and float(rows["Average"][2]) == pytest.approx(sum(neds) / 7, abs=0.006)
    samples = [int(rows[name][0]) for name in ROWS]
    assert samples == [1 + n % 3 for n in range(7)] and int(rows["Combined"][0]) == sum(samples)
    stem = latest_report(checkpoint, "clip4str+union14m")
    assert Path(f"{stem}.md").read_text() == report
    summary = json.loads(Path(f"{stem}.json").read_text())
    assert summary["selection"] == "clip4str+union14m"
    assert summary["averages"]["Union14M-Benchmark"]["ned"] == pytest.approx(sum(neds) / 7, abs=0.006)
    assert summary["tables"]["Union14M-Benchmark"][1] == ["Multi-Oriented", "Union14M-Benchmarks/multi_oriented"]
    with open(f"{stem}.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert sorted(row["dataset"] for row in written) == sorted(f"Union14M-Benchmarks/{s}" for s in UNION14M)
    assert {row["checkpoint"] for row in written} == {str(checkpoint)} and written[0]["max_label_length"] == "25"


def test_test_py_union14m_warns_about_missing_subsets_and_evaluates_the_rest(checkpoint, union_root, tmp_path):
    root = tmp_path / "data"
    (root / "test" / "Union14M-Benchmarks").mkdir(parents=True)
    for subset in UNION14M[2:]:  # curve and multi_oriented are missing
        (root / "test" / "Union14M-Benchmarks" / subset).symlink_to(union_root / "test" / "Union14M-Benchmarks"
                                                                    / subset)
    proc = subprocess.run([sys.executable, "test.py", str(checkpoint), "--data_root", str(root), "--union14m",
                           "--device", "cpu", "--num_workers", "0"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"benchmarks missing from .*: .*Union14M-Benchmarks/curve, Union14M-Benchmarks/multi_oriented",
                     proc.stderr)
    assert list(table(proc.stdout, "Union14M-Benchmark")) == ROWS[2:] + ["Combined", "Average"]


def test_a_group_added_by_yaml_with_its_own_length_filter(checkpoint, union_root, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("groups:\n  - name: Mine\n    max_label_length: 50\n    average: true\n"
                    "    datasets:\n      Long words: LTB\n      Curved: Union14M-Benchmarks/curve\n")
    report = evaluate_checkpoint(checkpoint, union_root, device="cpu", num_workers=0, groups=[str(mine)])
    rows = table(report, "Mine")
    assert list(rows) == ["Long words", "Curved", "Combined", "Average"]
    assert rows["Long words"][0] == "1"  # the 40-character label fits 50, the 200-character one does not
    summary = json.loads(Path(f"{latest_report(checkpoint, 'clip4str+mine')}.json").read_text())
    assert summary["max_label_length"] == {"LTB": 50, "Union14M-Benchmarks/curve": 50}
    ltb = table(evaluate_checkpoint(checkpoint, union_root, device="cpu", num_workers=0, groups=["ltb"]), "LTB")
    assert ltb["LTB"][0] == "2"


def test_parseq_protocol_and_ost_tables(checkpoint, tmp_path):
    images = word_images()
    for name, part in (("IC13_857", images[:2]), ("IC13_1015", images[:3]), ("HOST", images[3:5]),
                       ("WOST", images[5:8])):
        write_lmdb(tmp_path / "test" / name, part)
    report = evaluate_checkpoint(checkpoint, tmp_path, device="cpu", num_workers=0, protocol="parseq",
                                 groups=["ost"])
    assert list(table(report, "Benchmark (Subset)")) == ["IC13_857", "Combined"]
    assert list(table(report, "Benchmark")) == ["IC13_1015", "Combined"]
    assert list(table(report, "OST")) == ["HOST", "WOST", "Combined", "Average"]
    assert Path(f"{latest_report(checkpoint, 'parseq+ost')}.md").is_file()


def latest_report(checkpoint: Path, selection: str) -> str:
    """The path without suffix of the report of `selection` written last beside `checkpoint` (its name ends with a
    digest of the settings)."""
    newest = max(checkpoint.parent.glob(f"{checkpoint.name}.log_{selection}.*.md"), key=lambda p: p.stat().st_mtime)
    return str(newest)[:-len(".md")]


def test_selections_and_their_errors(tmp_path):
    assert select_groups()[0] == "newFalse" and select_groups(new=True)[0] == "newTrue"
    name, groups = select_groups("parseq", True, ["union14m", "ost", "ltb"])
    assert name == "parseq+new+union14m+ost+ltb"
    assert [g.name for g in groups] == ["Benchmark (Subset)", "Benchmark", "New", "Union14M-Benchmark", "OST", "LTB"]
    assert label_lengths(groups, 25)["LTB"] == 255 and label_lengths(groups, 25)["IIIT5k"] == 25
    assert select_groups(datasets=["synth", "a/b"])[0] == "datasets_synth+a-b"
    with pytest.raises(GroupError, match="clip4str, ltb, new, ost, parseq, union14m"):
        load_groups("nonesuch")
    with pytest.raises(GroupError, match=r"different groups are named 'Benchmark \(Subset\)'"):
        select_groups("parseq", extra=["clip4str"])
    with pytest.raises(GroupError, match="cannot be combined"):
        select_groups(extra=["ost"], datasets=["synth"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: X\n    datasets: [A]\n    max_len: 3\n")
    with pytest.raises(GroupError, match=r"bad\.yaml: groups\[0\] \(X\): unknown keys max_len"):
        load_groups(str(bad))
    long = tmp_path / "long.yaml"
    long.write_text("groups:\n  - name: Long IIIT5k\n    datasets: [IIIT5k]\n    max_label_length: 40\n")
    with pytest.raises(GroupError, match="IIIT5k is in groups with max_label_length 25 and 40"):
        label_lengths(select_groups(extra=[str(long)])[1], 25)


def report_json(accuracies: Dict[str, float], tables: Dict[str, List[List[str]]], checkpoint: str) -> dict:
    result = lambda name, acc: {"dataset": name, "num_samples": 10, "accuracy": acc, "ned": 0.0, "confidence": 0.0,
                                "label_length": 0.0}
    return {"checkpoint": checkpoint, "datasets": {n: result(n, a) for n, a in accuracies.items()},
            "groups": {g: result("Combined", 50.0) for g in tables}, "tables": tables,
            "averages": {g: result("Average", 40.0) for g in tables if g == "OST"}}


def test_compare_runs_prints_reports_side_by_side(tmp_path, capsys):
    a = report_json({"HOST": 10.0, "WOST": 20.0}, {"OST": [["HOST", "HOST"], ["WOST", "WOST"]]}, "/x/base.ckpt")
    b = report_json({"HOST": 30.5, "IIIT5k": 99.0}, {"OST": [["HOST", "HOST"], ["WOST", "WOST"]],
                                                   "Benchmark": [["IIIT5k", "IIIT5k"]]}, "/y/large.ckpt")
    for name, data in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(data))
    compare_runs.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert out.startswith("OST (accuracy):\n| Dataset  | base.ckpt | large.ckpt |\n"
                          "|:--------:|----------:|-----------:|\n")
    assert "| HOST     |     10.00 |      30.50 |" in out and "| WOST     |     20.00 |          - |" in out
    assert "| Average  |     40.00 |      40.00 |" in out
    assert "Benchmark (accuracy):" in out and "| IIIT5k   |         - |      99.00 |" in out
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path / "a.json"), str(tmp_path / "broken.json")])
    assert "broken.json: not a readable JSON report" in capsys.readouterr().err
