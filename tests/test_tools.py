"""Command-line tools: folder → LMDB → dataset round trip, LMDB inspection, synthetic word images."""
import io
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from multiscript import SCRIPT_WORDS, WORDS, multiscript_charset, script_fonts
from PIL import Image

from strhub.data.dataset import LmdbDataset
from strhub.data.module import SceneTextDataModule
from strhub.tokenizer import CHARSET_36, CHARSET_94, load_charset
from strhub.tools import build_charset, create_lmdb, inspect_lmdb, render_words, typefaces

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "misc" / "test_images"  # ten real word images and their labels.tsv


@pytest.mark.parametrize("tool", ["create_lmdb", "inspect_lmdb", "render_words", "build_charset", "filter_lmdb",
                                  "build_dataset", "compare_runs"])
def test_every_tool_runs_as_a_module_with_help(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [tool, "--help"])
    monkeypatch.delitem(sys.modules, f"strhub.tools.{tool}", raising=False)  # run it fresh, as `python -m` does
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"strhub.tools.{tool}", run_name="__main__")
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {tool}")


def test_a_tool_runs_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-m", "strhub.tools.create_lmdb", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage:")


def test_folder_to_lmdb_to_dataset_round_trip(tmp_path, capsys):
    folder = TEST_IMAGES
    entries = [line.split("\t") for line in (folder / "labels.tsv").read_text().splitlines()]
    create_lmdb.main([str(folder), str(folder / "labels.tsv"), str(tmp_path / "db")])
    assert f"wrote {len(entries)} of {len(entries)} records" in capsys.readouterr().out
    dataset = LmdbDataset(tmp_path / "db", CHARSET_94, 25)
    assert dataset.labels == [label for _, label in entries]
    for item, (name, _) in enumerate(entries):
        with Image.open(folder / name) as original:
            assert np.array_equal(np.asarray(dataset[item][0]), np.asarray(original.convert("RGB")))


def test_broken_and_missing_images_are_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(TEST_IMAGES, folder)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    (folder / names[0]).write_bytes(b"\xff\xd8 not really a jpeg")
    labels = folder / "labels.tsv"
    labels.write_text(labels.read_text() + "absent.png\tghost\n")
    create_lmdb.main([str(folder), str(labels), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    total = len(labels.read_text().splitlines())
    assert f"wrote {total - 2} of {total} records to {tmp_path / 'db'} (2 skipped)" in out
    assert f"{names[0]} does not decode" in err and "absent.png not found" in err
    assert len(LmdbDataset(tmp_path / "db", CHARSET_94, 25)) == total - 2


def test_label_list_convention_and_errors(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png\tNew York\nb.png Hello World\n\nc.png\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels\.txt:4: expected 'file<TAB>label'"):
        create_lmdb.read_label_list(labels)
    labels.write_text("a.png\tNew York\nb.png Hello World\n", encoding="utf-8")
    assert create_lmdb.read_label_list(labels) == [(1, "a.png", "New York"), (2, "b.png", "Hello World")]


def test_existing_lmdb_is_not_overwritten_silently(tmp_path):
    create_lmdb.write_lmdb(tmp_path / "db", [(b"x", "a")])
    with pytest.raises(FileExistsError, match="data.mdb exists"):
        create_lmdb.write_lmdb(tmp_path / "db", [(b"y", "b")])
    assert create_lmdb.write_lmdb(tmp_path / "db", [(b"y", "b"), (b"z", "c")], overwrite=True) == 2


def test_inspect_reports_counts_histogram_coverage_and_unreadable(tmp_path, capsys):
    good = (TEST_IMAGES / "cute-184.jpg").read_bytes()
    records = [(good, "SALMON"), (b"broken", "Café"), (good, "a" * 30), (good, "#!")]
    create_lmdb.write_lmdb(tmp_path / "set" / "db", records)
    inspect_lmdb.main([str(tmp_path / "set"), "--charset", "36", "--samples", "2"])
    out = capsys.readouterr().out
    assert f"== {tmp_path / 'set' / 'db'}" in out and "records: 4" in out
    assert "   30        1 " in out and "(over max_label_length)" in out
    assert "labels fully inside the charset (after its case folding): 3 (75.00 %)" in out
    assert "characters outside the charset (2 distinct): '#': 1, '!': 1" in out
    assert "kept by the dataset filter: 2 of 4 (too long: 1, empty: 1)" in out
    assert "image width min/median/max: 159/159/159, height: 248/248/248" in out
    assert "unreadable images: 1 (records 2)" in out
    samples = out.split("sample labels:\n")[1].split()
    assert len(samples) == 4 and samples[1] in {"'SALMON'", "'Cafe'", "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'", "'#!'"}


def renderer(**overrides) -> render_words.WordRenderer:
    settings = dict(charset=CHARSET_94, fonts=typefaces.find_fonts(), words=render_words._WORDS, height=32,
                    width=0, min_length=1, max_length=12, font_sizes=(20, 44), image_format="jpeg", seed=0)
    return render_words.WordRenderer(**{**settings, **overrides})


def test_strhubs_own_fonts_are_found_with_their_licences():
    fonts = typefaces.find_fonts()
    own = sorted(typefaces.PACKAGED_FONTS.glob("*.ttf"))
    assert [f.name for f in own] == ["DejaVuSans.ttf", "Lohit-Devanagari.ttf", "wqy-microhei-subset.ttf"]
    assert set(own) <= set(fonts) and fonts == sorted(fonts)
    licences = [path.read_text(encoding="utf-8") for path in typefaces.PACKAGED_FONTS.glob("LICENSE-*.txt")]
    assert all(sum(font.name in text for text in licences) == 1 for font in own)


def test_generator_writes_the_data_module_layout(tmp_path):
    written = render_words.generate(tmp_path, {"train": 30, "val": 10, "test": 10}, renderer(), train_dir="real",
                                    test_name="synth")
    assert written == {"train": tmp_path / "train" / "real", "val": tmp_path / "val",
                       "test": tmp_path / "test" / "synth"}
    dm = SceneTextDataModule(str(tmp_path), "real", (32, 128), 25, CHARSET_94, CHARSET_36, 8, 0, augment=True)
    assert len(dm.train_dataset) == 30 and len(dm.val_dataset) == 10
    images, labels = next(iter(dm.test_dataloaders(["synth"])["synth"]))
    assert images.shape == (8, 3, 32, 128)
    train = LmdbDataset(tmp_path / "train" / "real", CHARSET_94, 25)
    assert all(1 <= len(label) <= 12 for label in train.labels) and train.total == 30
    assert {train[i][0].height for i in range(30)} == {32}


def test_generator_is_deterministic_under_a_seed_whatever_the_processes(tmp_path):
    counts = {"train": 40, "val": 0, "test": 0}
    for name, seed, workers in (("a", 5, 1), ("b", 5, 2), ("c", 6, 1)):
        render_words.generate(tmp_path / name, counts, renderer(seed=seed), workers=workers)
    data = {name: (tmp_path / name / "train" / "synth" / "data.mdb").read_bytes() for name in "abc"}
    assert data["a"] == data["b"] and data["a"] != data["c"]


def test_generator_respects_a_small_charset_and_fixed_size(tmp_path):
    written = render_words.generate(tmp_path, {"test": 30}, renderer(charset="abc123", width=100, height=24,
                                                                     image_format="png"))
    dataset = LmdbDataset(written["test"], "abc123", 25)
    assert len(dataset) == 30 and all(set(label) <= set("abc123") for label in dataset.labels)
    assert {dataset[i][0].size for i in range(30)} == {(100, 24)}


def test_fonts_without_the_glyphs_are_not_used():
    font = typefaces.PACKAGED_FONTS / "wqy-microhei-subset.ttf"  # ASCII and Han, no emoji (DejaVu Sans has some)
    coverage = typefaces.glyph_coverage(font, "ab\U0001F600")
    assert coverage == frozenset("ab")


def test_generator_names_packages_when_no_font_is_found(tmp_path, capsys):
    with pytest.raises(SystemExit):
        render_words.main([str(tmp_path / "out"), "--fonts", str(tmp_path)])
    assert f"apt-get install {typefaces.FONT_PACKAGES}" in capsys.readouterr().err


def test_generator_command_line(tmp_path, capsys):
    render_words.main([str(tmp_path), "--train", "20", "--val", "5", "--test", "0", "--charset", "36", "--seed", "1"])
    out = capsys.readouterr().out
    assert f"train: 20 images in {tmp_path / 'train' / 'synth'}" in out and "test:" not in out
    assert set("".join(LmdbDataset(tmp_path / "val", CHARSET_36, 25).labels)) <= set(CHARSET_36)


def test_build_charset_from_labels_and_word_lists(tmp_path, capsys):
    create_lmdb.write_lmdb(tmp_path / "data" / "a", [(b"x", "北京 站"), (b"x", "Cafe\u0301"), (b"x", "مرحبا")])
    create_lmdb.write_lmdb(tmp_path / "data" / "b", [(b"x", "北 京\t"), (b"x", "ok")])
    (tmp_path / "words.txt").write_text("नमस्ते\nЁж\n", encoding="utf-8")
    out = tmp_path / "chars.txt"
    build_charset.main([str(tmp_path / "data"), "--text", str(tmp_path / "words.txt"), "--out", str(out),
                        "--add", "36"])
    others = sorted(set("北京站Caféمرحباनमस्तेЁж") - set(CHARSET_36))
    assert load_charset(str(out)) == CHARSET_36 + "".join(others)  # NFC, no whitespace, the preset first
    assert f"wrote {36 + len(others)} characters to {out} (from 2 LMDBs and 1 text files)" in capsys.readouterr().out
    build_charset.main([str(tmp_path / "data"), "--out", str(out), "--keep-whitespace", "--min-count", "2"])
    assert load_charset(str(out)) == " 京北"  # the space kept (the tab never), rarer characters left out
    assert "; 12 seen fewer than 2 times left out: '站Caféمرحباok')" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_charset.main([str(tmp_path / "nothing"), "--out", str(out)])
    assert "no data.mdb found" in capsys.readouterr().err


def script_renderer(**overrides) -> render_words.WordRenderer:
    settings = dict(charset=multiscript_charset(), fonts=script_fonts(), words=WORDS, height=32, width=0,
                    min_length=1, max_length=12, font_sizes=(30, 30), image_format="png", seed=0, word_share=1.0)
    return render_words.WordRenderer(**{**settings, **overrides})


def test_words_in_other_scripts_are_kept_as_written_and_unusable_ones_counted(tmp_path):
    # Two fonts needed, outside the charset, too long, and an NFD word that NFC turns into the charset's é.
    words = WORDS + ["北京مرحبا", "\U0001F600", "a" * 13, "e\u0301"]
    renderer = script_renderer(words=words, charset=multiscript_charset() + "é")
    assert renderer.word_counts == {"used": len(WORDS) + 1, "no single font has all its glyphs": 1,
                                    "characters outside the charset": 1, "length outside --min-length/--max-length": 1}
    assert renderer.unusable_words == ["北京مرحبا"] and renderer.uncovered == "" and renderer.words[-1] == "é"
    written = render_words.generate(tmp_path, {"train": 40}, renderer)
    labels = LmdbDataset(written["train"], renderer.alphabet, 25, normalize_unicode=False).labels
    assert len(labels) == 40 and set(labels) <= set(WORDS + ["é"])


def test_right_to_left_text_is_shaped():
    assert typefaces.needs_shaping("مرحبا") and typefaces.needs_shaping("नमस्ते")  # joining; a virama
    assert not typefaces.needs_shaping("中国 Москва Tiếng") and not typefaces.needs_shaping("")
    renderer = script_renderer(words=SCRIPT_WORDS["Arabic"][:1])
    shaped = Image.open(io.BytesIO(renderer.render("train", 0)[0]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_words, "needs_shaping", lambda text: False)
        unshaped = Image.open(io.BytesIO(renderer.render("train", 0)[0]))
    assert shaped.height == unshaped.height and shaped.width < 0.9 * unshaped.width  # joined letters are narrower


def test_vertical_text_is_for_cjk_only():
    assert typefaces.is_vertical_script("中国서울カタカナ") and not typefaces.is_vertical_script("中国a")
    for word, turned in (("中国北京", True), ("москва", False)):
        images = [script_renderer(words=[word], vertical=share).render("train", 0) for share in (0.0, 1.0)]
        assert images[0][1] == images[1][1] == word
        assert (images[0][0] != images[1][0]) == turned


def test_shaping_without_libraqm_is_an_error_naming_the_packages(monkeypatch):
    monkeypatch.setattr(render_words.features, "check", lambda feature: False)
    renderer(charset="abc")  # Latin text needs no shaping
    for settings in ({"charset": "ab\u0645"}, {"charset": "ab", "vertical": 0.5}):
        with pytest.raises(RuntimeError, match=f"apt-get install {typefaces.RAQM_PACKAGES}"):
            renderer(**settings)


def test_generator_command_line_reports_characters_without_glyphs_and_words(tmp_path, capsys):
    (tmp_path / "chars.txt").write_text("a\nb\n\u0800\n", encoding="utf-8")  # no font draws Samaritan
    (tmp_path / "words.txt").write_text("ab\nba\nabc\n", encoding="utf-8")
    render_words.main([str(tmp_path / "out"), "--train", "4", "--val", "0", "--test", "0", "--charset-file",
                       str(tmp_path / "chars.txt"), "--words", str(tmp_path / "words.txt")])
    out, err = capsys.readouterr()
    assert "no font has glyphs for 1 characters of the charset" in err and "fonts-wqy-microhei" in err
    assert "words: 2 of 3 used (skipped characters outside the charset: 1)" in out
