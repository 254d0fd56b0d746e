"""LmdbDataset: label filtering in the original's order, Unicode switch, image modes, corrupt records, tree
globbing."""
import io
import warnings
from pathlib import Path
from typing import Sequence, Tuple

import lmdb
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from strhub.data.dataset import (
    LmdbDataset,
    build_tree_dataset,
    check_label_settings,
    find_lmdbs,
    lmdb_datasets,
    skip_corrupt_collate,
    to_rgb,
)
from strhub.tokenizer import CHARSET_36, CHARSET_94, load_charset
from strhub.tools.create_lmdb import write_lmdb


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def word_image(width: int = 40, height: int = 16, colour: Tuple[int, int, int] = (200, 10, 10)) -> bytes:
    return encode(Image.new("RGB", (width, height), colour))


def make_lmdb(path: Path, labels: Sequence[str], images: Sequence[bytes] = ()) -> Path:
    """An LMDB whose record i (1-based) has width 10 + i unless `images` are given."""
    images = images or [word_image(10 + i) for i in range(1, len(labels) + 1)]
    write_lmdb(path, zip(images, labels))
    return path


def test_labels_kept_in_record_order_with_their_images(tmp_path):
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["abc", "€€", "Hello"]), CHARSET_94, 25)
    assert len(dataset) == 2 and dataset.total == 3
    assert dataset.labels == ["abc", "Hello"] and dataset.indices == [1, 3]
    img, label = dataset[1]
    assert label == "Hello" and img.mode == "RGB" and img.size == (13, 16)


def test_whitespace_is_removed_before_the_length_limit(tmp_path):
    root = make_lmdb(tmp_path / "db", ["a b\tc\n", "x" * 25 + " "])
    assert LmdbDataset(root, CHARSET_36, 25).labels == ["abc", "x" * 25]
    kept = LmdbDataset(root, CHARSET_36 + " ", 25, remove_whitespace=False)
    assert kept.labels == ["a bc"] and kept.filtered["too_long"] == 1  # the adapter drops the tab and newline


def test_nfkd_folds_to_ascii_by_default(tmp_path):
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["Café", "ﬁsh", "Ærø"]), CHARSET_94, 25)
    assert dataset.labels == ["Cafe", "fish", "r"]  # Æ and ø have no ASCII decomposition


def test_length_limit_applies_before_charset_filtering(tmp_path):
    # 26 characters of which only 20 are in the 36-char charset: too long, although 20 would fit.
    label = "a" * 20 + "!" * 6
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", [label, "a" * 25, "a" * 26]), CHARSET_36, 25)
    assert dataset.labels == ["a" * 25]
    assert dataset.filtered == {"too_long": 2}


def test_charset_adapter_lowercases_and_removes_then_empty_labels_drop(tmp_path):
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["Hello, World-42!", "#?!", "ÉCOLE"]), CHARSET_36, 25)
    assert dataset.labels == ["helloworld42", "ecole"]
    assert dataset.filtered == {"empty": 1} and dataset.num_trimmed == 1
    assert dataset.summary.endswith("2 of 3 records kept (filtered empty: 1); 1 labels lost characters outside the "
                                    "charset (',' 1, '-' 1, '!' 1)")
    assert dataset.removed == {",": 1, "-": 1, "!": 1}


def test_min_image_dim_drops_small_images(tmp_path):
    images = [word_image(40, 16), word_image(40, 8), word_image(6, 30), b"garbage"]
    root = make_lmdb(tmp_path / "db", ["a", "b", "c", "d"], images)
    assert len(LmdbDataset(root, CHARSET_36, 25)) == 4  # default 0: no image is opened
    with pytest.warns(UserWarning, match=r"image-000000004 is unreadable"):
        dataset = LmdbDataset(root, CHARSET_36, 25, min_image_dim=10)
    assert dataset.labels == ["a"]
    assert dataset.filtered == {"too_small": 2, "unreadable": 1}


def test_unicode_switch_keeps_cjk_labels_with_a_charset_file(tmp_path):
    charset_file = tmp_path / "charset.txt"
    charset_file.write_text("\n".join("東京中文한국어é") + "\n", encoding="utf-8")
    charset = load_charset(str(charset_file))
    root = make_lmdb(tmp_path / "db", ["東京", "中 文", "한국어", "e\u0301"])  # the last one in NFD form
    assert len(LmdbDataset(root, charset, 25)) == 0  # the original's NFKD-to-ASCII deletes all of them
    kept = LmdbDataset(root, charset, 25, normalize_unicode=False)
    assert kept.labels == ["東京", "中文", "한국어", "é"]  # NFC composes e + U+0301 into the charset's é


LABELS_IN_SCRIPTS = ["北京站", "東京タワー", "서울역", "مرحبا بكم", "שלום", "नमस्ते दुनिया", "বাংলা", "தமிழ்", "ภาษาไทย",
                     "Москва", "Ελλάδα", "Tiếng Việt", "Ærø", "ǅemal", "𠀋𠂉"]  # NFC; spaces kept; a non-BMP pair


def test_labels_in_every_script_round_trip_byte_exact(tmp_path):
    charset = "".join(dict.fromkeys("".join(LABELS_IN_SCRIPTS)))
    root = make_lmdb(tmp_path / "db", LABELS_IN_SCRIPTS)
    with lmdb.open(str(root), readonly=True, lock=False) as env, env.begin() as txn:
        stored = [txn.get(f"label-{i:09d}".encode()) for i in range(1, len(LABELS_IN_SCRIPTS) + 1)]
    assert stored == [label.encode("utf-8") for label in LABELS_IN_SCRIPTS]
    dataset = LmdbDataset(root, charset, 25, remove_whitespace=False, normalize_unicode=False)
    assert [label.encode("utf-8") for label in dataset.labels] == stored
    assert dataset.filtered == {} and dataset.num_trimmed == 0
    without_spaces = LmdbDataset(root, charset.replace(" ", ""), 25, normalize_unicode=False)
    assert without_spaces.labels == [label.replace(" ", "") for label in LABELS_IN_SCRIPTS]


def test_characters_outside_a_large_charset_are_counted(tmp_path):
    charset = "".join(chr(code) for code in range(0x4E00, 0x4E00 + 6000))  # 6,000 CJK ideographs
    root = make_lmdb(tmp_path / "db", ["一丁七", "一·丁", "Ω一", "ΩΩ", "一" * 26])
    dataset = LmdbDataset(root, charset, 25, normalize_unicode=False)
    assert dataset.labels == ["一丁七", "一丁", "一"]
    assert dataset.filtered == {"empty": 1, "too_long": 1} and dataset.num_trimmed == 2
    assert dataset.removed == {"·": 1, "ω": 1}  # a charset without case folds labels to lower case first
    assert dataset.summary.endswith("; 2 labels lost characters outside the charset ('·' 1, 'ω' 1)")


def test_label_settings_that_delete_charset_characters_are_refused():
    check_label_settings(CHARSET_94, remove_whitespace=True, normalize_unicode=True)
    check_label_settings("中文 ", remove_whitespace=False, normalize_unicode=False)
    with pytest.raises(ValueError, match=r"2 non-ASCII characters \(e\.g\. '中文'\).*data\.normalize_unicode=false"):
        check_label_settings("ab中文", remove_whitespace=True, normalize_unicode=True)
    with pytest.raises(ValueError, match=r"whitespace \(' '\).*data\.remove_whitespace=false"):
        check_label_settings("ab ", remove_whitespace=True, normalize_unicode=False)


def test_charset_file_in_nfc_at_any_size(tmp_path):
    charset_file = tmp_path / "charset.txt"
    chars = [chr(code) for code in range(0x4E00, 0x4E00 + 6000)]
    charset_file.write_text("\ufeff" + "\n".join(["e\u0301", " ", "\u093f", "\u212b"] + chars + ["一"]) + "\n",
                            encoding="utf-8")  # a BOM, a decomposed é, a space, a vowel sign, the Ångström sign
    charset = load_charset(str(charset_file))
    assert charset == "é \u093f\u00c5" + "".join(chars) and len(charset) == 6004
    charset_file.write_text("a\nq\u0301\n", encoding="utf-8")  # no precomposed q with acute exists
    with pytest.raises(ValueError, match=r"charset\.txt:2: expected one character per line"):
        load_charset(str(charset_file))


def test_unlabelled_gives_record_numbers(tmp_path):
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["", "!"]), CHARSET_36, 25, unlabelled=True)
    assert len(dataset) == 2 and [dataset[i][1] for i in range(2)] == [1, 2]


def test_transform_is_applied(tmp_path):
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["a"]), CHARSET_36, 25, transform=lambda img: img.size)
    assert dataset[0] == ((11, 16), "a")


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("1", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                       ("CMYK", "JPEG"), ("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"),
                                       ("F", "TIFF")])
def test_every_image_mode_decodes_to_rgb(tmp_path, mode, fmt):
    if mode[0] in "IF":
        ramp = np.linspace(0, 60000, 24 * 12).reshape(12, 24)
        img = Image.fromarray(ramp.astype(np.float32) if mode == "F" else ramp.astype(np.int32)).convert("I")
        img = img if mode == "I" else img.convert(mode)
    else:
        img = Image.new("RGB", (24, 12), (90, 160, 30)).convert(mode)
    dataset = LmdbDataset(make_lmdb(tmp_path / "db", ["a"], [encode(img, fmt)]), CHARSET_36, 25)
    with Image.open(io.BytesIO(encode(img, fmt))) as stored:
        assert stored.mode == mode
    out, _ = dataset[0]
    assert out.mode == "RGB" and out.size == (24, 12)
    pixels = np.asarray(out)
    assert len(np.unique(pixels)) > 1 if mode[0] in "IF" else pixels.any()  # no collapse to one value


def test_sixteen_bit_images_are_scaled_not_clipped():
    pixels = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(pixels)))
    assert out[0, :, 0].tolist() == [0, 128, 255]  # PIL's convert('RGB') would give [0, 255, 255]


def test_alpha_is_dropped_as_the_original_does():
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    rgb = to_rgb(img)
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((1, 0)) == (10, 20, 30)
    assert list(to_rgb(img).getdata()) == list(img.convert("RGB").getdata())


def corrupt_lmdb(path: Path) -> Path:
    good = word_image()
    jpeg = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    return make_lmdb(path, ["ok", "broken", "truncated", "fine"], [good, b"not an image", jpeg[:len(jpeg) // 2], good])


def test_corrupt_record_gives_none_with_a_warning_naming_lmdb_and_record(tmp_path):
    root = corrupt_lmdb(tmp_path / "db")
    dataset = LmdbDataset(root, CHARSET_36, 25)
    assert len(dataset) == 4  # labels are fine: nothing is known before decoding
    with pytest.warns(UserWarning, match=rf"{root}: image-000000002 could not be decoded"):
        assert dataset[1] is None
    with pytest.warns(UserWarning, match=r"image-000000003 could not be decoded \(OSError"):
        assert dataset[2] is None
    assert dataset.num_skipped == 2
    with pytest.warns(UserWarning):
        assert dataset[1] is None  # the same record counts once
    assert dataset.num_skipped == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_drops_corrupt_records_and_counts_them_across_workers(tmp_path, workers):
    dataset = LmdbDataset(corrupt_lmdb(tmp_path / "db"), CHARSET_36, 25, transform=lambda img: np.asarray(img))
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=skip_corrupt_collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert [list(labels) for _, labels in batches] == [["ok"], ["fine"]]
    assert batches[0][0].shape == (1, 16, 40, 3)
    assert dataset.num_skipped == 2


def test_collate_gives_none_when_every_record_is_corrupt():
    assert skip_corrupt_collate([None, None]) is None


def test_structural_errors_name_the_lmdb_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no LMDB at .*missing.*data\.mdb"):
        LmdbDataset(tmp_path / "missing", CHARSET_36, 25)
    with lmdb.open(str(tmp_path / "nocount")) as env, env.begin(write=True) as txn:
        txn.put(b"label-000000001", b"a")
    with pytest.raises(KeyError, match="nocount: key 'num-samples' is missing"):
        LmdbDataset(tmp_path / "nocount", CHARSET_36, 25)
    with lmdb.open(str(tmp_path / "nolabel")) as env, env.begin(write=True) as txn:
        txn.put(b"num-samples", b"2")
        txn.put(b"label-000000001", b"a")
    with pytest.warns(UserWarning, match="nolabel: key 'label-000000002' is missing .*; record skipped"):
        dataset = LmdbDataset(tmp_path / "nolabel", CHARSET_36, 25)  # a bad record: counted, and the rest read
    assert dataset.labels == ["a"] and dataset.filtered["unreadable"] == 1


def test_tree_dataset_concatenates_every_nested_lmdb_in_sorted_order(tmp_path):
    for name, labels in (("b/deep/er", ["b1"]), ("a", ["a1", "a2"]), ("c", ["c1"]), ("a/nested", ["n1"])):
        make_lmdb(tmp_path / "real" / name, labels)
    (tmp_path / "real" / "empty").mkdir()
    dataset = build_tree_dataset(tmp_path / "real", CHARSET_36, 25)
    assert [Path(d.root).relative_to(tmp_path / "real").as_posix() for d in lmdb_datasets(dataset)] == \
        ["a", "a/nested", "b/deep/er", "c"]
    assert [dataset[i][1] for i in range(len(dataset))] == ["a1", "a2", "n1", "b1", "c1"]
    assert find_lmdbs(tmp_path / "real" / "c") == [tmp_path / "real" / "c"]


def test_tree_dataset_without_lmdbs_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no LMDB under .*nowhere \(the folder does not exist\)"):
        build_tree_dataset(tmp_path / "nowhere", CHARSET_36, 25)
    with pytest.raises(FileNotFoundError, match=r"no data\.mdb at any depth"):
        build_tree_dataset(tmp_path, CHARSET_36, 25)


def test_datasets_over_the_same_lmdb_share_one_environment(tmp_path):
    root = make_lmdb(tmp_path / "db", ["a", "b"])
    first, second = LmdbDataset(root, CHARSET_36, 25), LmdbDataset(root, CHARSET_36, 25)
    assert first[0][1] == second[0][1] == "a"  # py-lmdb refuses a second open of the same files


def test_recreated_lmdb_at_the_same_path_is_read_afresh(tmp_path):
    root = make_lmdb(tmp_path / "db", ["old"])
    assert LmdbDataset(root, CHARSET_36, 25)[0][1] == "old"
    write_lmdb(root, [(word_image(), "new")], overwrite=True)
    assert LmdbDataset(root, CHARSET_36, 25)[0][1] == "new"
