"""Fuzzing the command lines of read.py, test.py, explain.py, export.py (run in this process, tests/entry_points.py)
and train.py's override check (strhub.app.overrides.check_overrides, which runs before Hydra starts).

Properties: the exit status is 0, 1 (some input could not be read) or 2 (refused); no traceback reaches the user; a
refusal is one `error:` line that names an option, override or value of the command line; nothing already written
(the checkpoint, the images, an existing output) is changed. Examples per property: `examples(N)` (tests/fuzz.py).
"""
import shutil
from pathlib import Path
from typing import List, Sequence

import pytest
from conftest import TEST_IMAGES
from entry_points import Outcome, run_script
from fuzz import examples
from hypothesis import given
from hypothesis import strategies as st

from strhub.app.overrides import check_overrides
from strhub.keys import ConfigError
from strhub.tools.create_lmdb import write_lmdb

NUMBERS = st.one_of(st.integers(-3, 4).map(str), st.sampled_from(["", "two", "1.5", "99999999999999999999", "0x10"]))
DEVICES = st.sampled_from(["cpu", "cuda", "cuda:7", "gpu0", "", "meta:0"])
OVERRIDE_NAMES = ["refine_iters", "decode_ar", "charset_test", "max_label_length", "refine_iter", "decode_ar_", "lr"]
OVERRIDES = st.builds("{}:{}={}".format, st.sampled_from(OVERRIDE_NAMES),
                      st.sampled_from(["int", "float", "str", "bool", "list", "xyz"]),
                      st.sampled_from(["0", "-1", "2", "true", "yes", "maybe", "[1,2]", "", "1e9", "abc"]))


def option(name: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """`[name, value]`, or nothing (the option left at its default)."""
    return st.one_of(st.just([]), values.map(lambda value: [name, value]))


def command_line(*parts: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(*parts, st.lists(OVERRIDES, max_size=2)).map(
        lambda lists: [item for part in lists for item in part])


def check_outcome(outcome: Outcome, args: Sequence[str]) -> None:
    """No traceback; a refusal is one error line naming something the command line holds."""
    assert outcome.status in (0, 1, 2), outcome.err
    assert "Traceback" not in outcome.err, outcome.err
    if outcome.status == 2:
        errors = [line for line in outcome.err.splitlines() if "error:" in line]
        assert len(errors) == 1, outcome.err
        tokens = {token for arg in args for token in (arg, arg.split(":")[0], arg.split("=")[0]) if token}
        assert any(token in errors[0] for token in tokens), (errors[0], args)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """A copy of the tiny checkpoint, one image and a data root whose test/SVT holds it."""
    folder = tmp_path_factory.mktemp("cli")
    shutil.copy(checkpoint, folder / "tiny.ckpt")
    image = sorted(TEST_IMAGES.glob("*.png"))[0]
    (folder / "images").mkdir()
    shutil.copy(image, folder / "images" / image.name)
    write_lmdb(folder / "data" / "test" / "SVT", [(image.read_bytes(), "word")])
    return folder


def unchanged(workspace: Path) -> dict:
    return {path: path.read_bytes() for path in [workspace / "tiny.ckpt", *sorted((workspace / "images").iterdir())]}


@examples(3)
@given(args=command_line(option("--batch_size", NUMBERS), option("--device", DEVICES),
                         option("--precision", st.sampled_from(["32", "bf16", "64"]))))
def test_read_py_command_lines(args: List[str], workspace: Path, monkeypatch, capsys) -> None:
    before = unchanged(workspace)
    outcome = run_script("read.py", [workspace / "tiny.ckpt", workspace / "images", *args], monkeypatch, capsys)
    check_outcome(outcome, args)
    assert unchanged(workspace) == before


@examples(3)
@given(args=command_line(option("--batch_size", NUMBERS), option("--num_workers", NUMBERS),
                         option("--rotation", NUMBERS), option("--device", DEVICES),
                         option("--protocol", st.sampled_from(["clip4str", "parseq", "nope", ""]))))
def test_test_py_command_lines(args: List[str], workspace: Path, tmp_path_factory, monkeypatch, capsys) -> None:
    before = unchanged(workspace)
    reports = tmp_path_factory.mktemp("reports")
    outcome = run_script("test.py", [workspace / "tiny.ckpt", "--data_root", workspace / "data", "--datasets", "SVT",
                                     "--output", reports, *args], monkeypatch, capsys)
    check_outcome(outcome, args)
    assert unchanged(workspace) == before


@examples(2)
@given(args=command_line(option("--batch_size", NUMBERS), option("--device", DEVICES),
                         option("--method", st.sampled_from(["attention", "gradcam", "saliency"]))))
def test_explain_py_command_lines(args: List[str], workspace: Path, tmp_path_factory, monkeypatch, capsys) -> None:
    before = unchanged(workspace)
    out = tmp_path_factory.mktemp("explained")
    outcome = run_script("explain.py", [workspace / "tiny.ckpt", workspace / "images", "--out", out, *args],
                         monkeypatch, capsys)
    check_outcome(outcome, args)
    assert unchanged(workspace) == before


@examples(2)
@given(opset=st.one_of(st.integers(-2, 13), st.integers(21, 40)).map(str), overrides=st.lists(OVERRIDES, max_size=2))
def test_export_py_refusals_name_the_option_and_change_nothing(opset: str, overrides: List[str], workspace: Path,
                                                               tmp_path_factory, monkeypatch, capsys) -> None:
    """Command lines export.py must refuse (an opset it cannot write) before it exports anything."""
    out = tmp_path_factory.mktemp("export")
    (out / "model.json").write_text("{}")  # a previous export's file: kept as it was
    args = ["--opset", opset, *overrides]
    outcome = run_script("export.py", [workspace / "tiny.ckpt", "--out", out, *args], monkeypatch, capsys)
    check_outcome(outcome, args)
    assert outcome.status == 2 and [path.name for path in out.iterdir()] == ["model.json"]
    assert (out / "model.json").read_text() == "{}"


TRAIN_KEYS = ["model.lr", "model.lrr", "trainer.max_steps", "trainer.max_step", "data.batch_size", "+seeed",
              "+model.refine_iters", "model.refine_iter", "trainer.devices", "dataset", "charset"]


@examples(12)
@given(overrides=st.lists(st.builds("{}={}".format, st.sampled_from(TRAIN_KEYS),
                                    st.sampled_from(["1", "-1", "abc", "[1,2]", "null", "custom", "94_full"])),
                          min_size=1, max_size=3))
def test_train_py_override_check_refuses_with_the_key_or_lets_hydra_through(overrides: List[str]) -> None:
    try:
        check_overrides("main", ["+experiment=tiny", *overrides])
    except ConfigError as err:
        assert "\n" not in str(err)
        assert any(arg.split("=")[0].lstrip("+").split(".")[-1] in str(err) for arg in overrides), (err, overrides)
