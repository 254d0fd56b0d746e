"""Fuzzing the files users hand the framework: LMDB records, image files, charset files and checkpoint files.

Properties: no exception but the documented one-line refusals (naming the file, record or key) reaches the user; a
bad record never stops a run (it is counted and named, and every good record is read); nothing already written is
changed; nothing in a file is ever run. Examples per property: `examples(N)` (tests/fuzz.py, conftest.py profiles).
"""
import random
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import lmdb
import pytest
import torch
from entry_points import run_script
from fuzz import GOOD_IMAGES, TEXT, bad_image, examples, hostile_pickle
from hypothesis import given
from hypothesis import strategies as st

from strhub.data.dataset import LmdbDataset, normalize_label, skip_corrupt_collate
from strhub.models.checkpoint import load_model
from strhub.models.safe_load import InvalidCheckpointError
from strhub.tokenizer import CHARSET_36, CharsetAdapter, load_charset

# One LMDB record: (label bytes, or None for a missing key; image bytes, or None for a missing key).
Record = Tuple[Optional[bytes], Optional[bytes]]
GOOD_PNG = GOOD_IMAGES["rgb"][1]()


@st.composite
def lmdb_record(draw: st.DrawFn) -> Record:
    label = draw(st.one_of(TEXT.map(lambda text: text.encode("utf-8")),  # any script, empty included
                           st.sampled_from([b"", b"x" * 5000, b"word", "Straße".encode()]),  # empty, huge, plain
                           st.binary(max_size=12),  # mostly not UTF-8
                           st.none()))  # the key is missing
    image = draw(st.one_of(st.just(GOOD_PNG), bad_image(), st.none()))
    return label, image


def write_records(root: Path, records: List[Record], num_samples: bytes) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with lmdb.open(str(root), map_size=2**26) as env, env.begin(write=True) as txn:
        txn.put(b"num-samples", num_samples)
        for index, (label, image) in enumerate(records, start=1):
            if label is not None:
                txn.put(f"label-{index:09d}".encode(), label)
            if image is not None:
                txn.put(f"image-{index:09d}".encode(), image)


def usable(label: Optional[bytes], max_length: int) -> bool:
    """Whether a record's label survives the default filter (NFKD to ASCII, the 36-character charset)."""
    try:
        text = label.decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        return False
    normalized = normalize_label(text, remove_whitespace=True, normalize_unicode=True)
    return len(normalized) <= max_length and bool(CharsetAdapter(CHARSET_36)(normalized))


@examples(8)
@given(records=st.lists(lmdb_record(), min_size=1, max_size=8), extra=st.integers(0, 2))
def test_a_bad_lmdb_record_never_stops_a_run(records: List[Record], extra: int, tmp_path_factory) -> None:
    """num-samples may exceed the records (`extra`): the missing ones are bad records too."""
    root = tmp_path_factory.mktemp("lmdb")
    write_records(root, records, str(len(records) + extra).encode())
    before = (root / "data.mdb").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = LmdbDataset(root, CHARSET_36, max_label_length=25)
        items = [skip_corrupt_collate([dataset[i]], lambda kept: kept) for i in range(len(dataset))]
    assert dataset.total == len(records) + extra
    assert len(dataset) + sum(dataset.filtered.values()) == dataset.total
    expected = [i for i, (label, _) in enumerate(records, start=1) if usable(label, 25)]
    assert dataset.indices == expected  # every good label kept, in order; bad ones counted in `filtered`
    decoded = [i for i, item in zip(dataset.indices, items) if item is not None]
    assert decoded == [i for i in expected if records[i - 1][1] == GOOD_PNG]
    assert dataset.num_skipped == len(expected) - len(decoded)
    for warning in caught:  # each names the LMDB and the record
        assert str(root) in str(warning.message) and "-0000000" in str(warning.message)
    assert (root / "data.mdb").read_bytes() == before


@pytest.mark.parametrize("num_samples", [b"", b"ten", b"-1", b"\xff"])
def test_an_lmdb_with_an_unusable_record_count_is_refused_naming_it(num_samples: bytes, tmp_path: Path) -> None:
    write_records(tmp_path / "db", [(b"word", GOOD_PNG)], num_samples)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'db'}: num-samples"):
        LmdbDataset(tmp_path / "db", CHARSET_36, max_label_length=25)


@examples(2)
@given(good=st.lists(st.sampled_from(sorted(GOOD_IMAGES)), min_size=2, max_size=5, unique=True),
       bad=st.lists(bad_image(), max_size=3))
def test_read_py_reads_every_image_that_decodes_and_names_every_other(good: List[str], bad: List[bytes],
                                                                       checkpoint: Path, tmp_path_factory,
                                                                       monkeypatch, capsys) -> None:
    folder = tmp_path_factory.mktemp("images")
    names = []
    for name in good:
        suffix, make = GOOD_IMAGES[name]
        (folder / f"good_{name}{suffix}").write_bytes(make())
        names.append(f"good_{name}{suffix}")
    for number, data in enumerate(bad):
        (folder / f"bad_{number}.png").write_bytes(data)
    if not good and not bad:
        (folder / "good_rgb.png").write_bytes(GOOD_PNG)
        names.append("good_rgb.png")
    outcome = run_script("read.py", [checkpoint, folder, "--batch_size", 3, "--device", "cpu"], monkeypatch,
                         capsys)
    assert outcome.status == (1 if bad else 0), outcome.err
    assert sorted(line.split(": ")[0] for line in outcome.out.splitlines()) == sorted(names)
    errors = [line for line in outcome.err.splitlines() if ": error: " in line]
    assert sorted(line.split(": ")[0] for line in errors) == [f"bad_{number}.png" for number in range(len(bad))]
    assert "Traceback" not in outcome.err


@examples(12)
@given(content=st.one_of(TEXT.map(lambda text: text.encode("utf-8")), st.binary(max_size=40),
                         st.lists(TEXT, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8-sig"))))
def test_a_charset_file_is_read_or_refused_naming_it(content: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("charset") / "chars.txt"
    path.write_bytes(content)
    try:
        charset = load_charset(str(path))
    except ValueError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    assert charset and len(set(charset)) == len(charset)
    assert path.read_bytes() == content


def checkpoint_variants(good: Path, marker: Path) -> st.SearchStrategy:
    """Damaged or hostile versions of the checkpoint `good`, as bytes."""
    whole = good.read_bytes()

    def wrong_tensors(seed: int) -> bytes:
        rng = random.Random(seed)
        checkpoint = torch.load(good, weights_only=True)
        state_dict = checkpoint["state_dict"]
        key = rng.choice(sorted(state_dict))
        change = rng.choice(["shape", "dtype", "drop", "scalar"])
        if change == "shape":
            state_dict[key] = torch.zeros(*(size + 1 for size in state_dict[key].shape))
        elif change == "dtype":
            state_dict[key] = state_dict[key].to(torch.int8)
        elif change == "drop":
            del state_dict[key]
        else:
            checkpoint["state_dict"] = 3
        path = marker.with_name(f"wrong_{seed}.ckpt")
        torch.save(checkpoint, path)
        return path.read_bytes()

    return st.one_of(st.binary(max_size=300), st.integers(1, len(whole) - 1).map(lambda cut: whole[:cut]),
                     st.integers(0, 2**16).map(wrong_tensors),
                     st.sampled_from([2, 5]).map(lambda protocol: hostile_pickle(marker, protocol)))


@examples(10)
@given(data=st.data())
def test_a_damaged_or_hostile_checkpoint_is_refused_naming_it(data: st.DataObject, checkpoint: Path,
                                                              tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("ckpt")
    marker = folder / "payload_ran"
    content = data.draw(checkpoint_variants(checkpoint, marker))
    path = folder / "model.ckpt"
    path.write_bytes(content)
    try:
        load_model(path)
    except (InvalidCheckpointError, ValueError) as err:
        assert str(path) in str(err) or path.name in str(err), err
    assert not marker.exists() and path.read_bytes() == content


@pytest.mark.parametrize("key", ["model.clip_model.text_projection", "model.clip_model.ln_final.weight"])
def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(key: str, checkpoint: Path, tmp_path: Path) -> None:
    """Found by the property above (deep profile): a dropped tensor the architecture is read off."""
    saved = torch.load(checkpoint, weights_only=True)
    del saved["state_dict"][key]
    path = tmp_path / "damaged.ckpt"
    torch.save(saved, path)
    with pytest.raises(InvalidCheckpointError, match=rf"damaged\.ckpt lacks the tensor '{key.split('.', 2)[-1]}'"):
        load_model(path)
