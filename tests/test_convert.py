"""The annotation-format converters on small fixtures written in each format (images drawn with Pillow), the
word geometry they share, filter_lmdb and the atomic LMDB write."""
import io
import json
import runpy
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
from conftest import REAL_SAMPLE
from PIL import Image, ImageDraw

from strhub.tools import filter_lmdb
from strhub.tools.convert import art, case_sensitive, cocotext, icdar, lsvt, mlt19, textocr, union14m
from strhub.tools.create_lmdb import read_label_list, read_records, write_lmdb
from strhub.tools.geometry import min_area_rect, word_quad

RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (40, 40, 40)
CONVERTERS = ["icdar", "cocotext", "textocr", "art", "lsvt", "mlt19", "union14m", "case_sensitive"]


def rotated_quad(cx: float, cy: float, width: float, height: float, degrees: float) -> np.ndarray:
    """Corners of a rotated rectangle, clockwise on screen from its top-left."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    corners = np.array([[-width, -height], [width, -height], [width, height], [-width, height]]) / 2
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def scene(path: Path, quads: Sequence[np.ndarray], size: Tuple[int, int] = (200, 120)) -> Path:
    """An image with each word region painted red in its first half and blue in its second (reading order)."""
    img = Image.new("RGB", size, GREY)
    draw = ImageDraw.Draw(img)
    for tl, tr, br, bl in quads:
        top, bottom = (tl + tr) / 2, (bl + br) / 2
        draw.polygon([tuple(p) for p in (tl, top, bottom, bl)], fill=RED)
        draw.polygon([tuple(p) for p in (top, tr, br, bottom)], fill=BLUE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)
    return path


def flat(quad: np.ndarray) -> List[float]:
    return [round(float(v), 2) for v in np.asarray(quad).reshape(-1)]


def records(root: Path) -> List[Tuple[str, str, Image.Image, bytes]]:
    """`(label, name, image, bytes)` per record."""
    return [(label, name, Image.open(io.BytesIO(image)), image) for _, image, label, name in read_records(root)]


def reads_red_then_blue(img: Image.Image) -> bool:
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    width = pixels.shape[1]
    left, right = pixels[2:-2, 2:width // 2 - 3].mean((0, 1)), pixels[2:-2, width // 2 + 3:-2].mean((0, 1))
    return left[0] > 200 > left[2] + 150 and right[2] > 200 > right[0] + 150


def test_word_quad_keeps_a_quadrilateral_reverses_counter_clockwise_and_boxes_polygons():
    quad = rotated_quad(50, 40, 60, 20, 25)
    assert np.allclose(word_quad(quad), quad)
    assert np.allclose(word_quad(quad[[0, 3, 2, 1]]), quad)  # the same corners given counter-clockwise
    bent = np.concatenate([np.linspace(quad[0], quad[1], 5), np.linspace(quad[2], quad[3], 5)])  # curved text
    assert np.allclose(word_quad(bent), quad, atol=1e-6)
    assert np.allclose(word_quad(quad[[0, 1, 3, 2]]), quad, atol=1e-6)  # a self-crossing order
    with pytest.raises(ValueError, match="non-collinear"):
        min_area_rect(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=float))


def test_icdar2015_quadrilaterals_are_rectified_and_bad_lines_named(tmp_path, capsys):
    words = [rotated_quad(60, 40, 60, 20, 20), rotated_quad(140, 80, 40, 16, -30)]
    scene(tmp_path / "images" / "img_1.jpg", words)
    lines = [f"{','.join(map(str, flat(words[0])))},Genaxis Theatre",
             f"{','.join(map(str, flat(words[1][[0, 3, 2, 1]])))},x,y",  # counter-clockwise, commas in the text
             f"{','.join(map(str, flat(words[0])))},###",
             "5,5,5,5,5,5,5,5,dot", "500,500,600,500,600,520,500,520,far", "1,2,3,4,5,6,7,bad"]
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "gt_img_1.txt").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    icdar.main([str(tmp_path / "gt"), str(tmp_path / "images"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert f"wrote 2 records from 1 images to {tmp_path / 'db'}; left out: don't care 1; skipped 3" in out
    assert "gt_img_1.txt:4: degenerate region" in err and "gt_img_1.txt:5: region lies outside the 200x120" in err
    assert "gt_img_1.txt:6: neither" in err
    (label1, name1, img1, _), (label2, name2, img2, _) = records(tmp_path / "db")
    assert (label1, name1, img1.format, img1.size) == ("Genaxis Theatre", "gt_img_1.txt:1", "JPEG", (60, 20))
    assert (label2, name2, img2.size) == ("x,y", "gt_img_1.txt:2", (40, 16))
    assert reads_red_then_blue(img1) and reads_red_then_blue(img2)


def test_icdar2013_boxes_are_cut_exactly(tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "img_2.png")
    Image.fromarray(pixels).save(tmp_path / "images" / "7.png")
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "gt_img_2.txt").write_text('10, 20, 50, 40, "Tired,ness"\n70, 50, 90, 70, "Edge"\n')
    (tmp_path / "gt" / "gt_7.txt").write_text('0 0 30 10 "say \\"hi\\""\n')  # training-set style
    icdar.main([str(tmp_path / "gt"), str(tmp_path / "images"), str(tmp_path / "db")])
    assert "wrote 3 records from 2 images" in capsys.readouterr().out
    (c, _, crop_c, _), (a, name, crop_a, _), (b, _, crop_b, _) = records(tmp_path / "db")  # gt_7 sorts first
    assert (a, b, c, name) == ("Tired,ness", "Edge", 'say "hi"', "gt_img_2.txt:1")
    assert crop_a.format == "PNG" and np.array_equal(np.asarray(crop_a), pixels[20:40, 10:50])
    assert np.array_equal(np.asarray(crop_b), pixels[50:60, 70:80])  # clipped at the image border
    assert np.array_equal(np.asarray(crop_c), pixels[0:10, 0:30])


def test_icdar_word_list_stores_the_word_images_as_they_are(tmp_path, capsys):
    scene(tmp_path / "words" / "word_1.png", [], (30, 12))
    scene(tmp_path / "words" / "word_2.png", [], (20, 10))
    (tmp_path / "words" / "word_4.png").write_bytes(b"not a png")
    (tmp_path / "gt.txt").write_text('word_1.png, "Hello"\nword_2.png, "a \\"b\\""\nword_3.png, "gone"\nno comma\n'
                                     'word_4.png, "broken"\n')
    icdar.main([str(tmp_path / "gt.txt"), str(tmp_path / "words"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert "wrote 2 records from 4 images" in out and "skipped 3" in out
    assert "word_3.png: image word_3.png not found" in err and "gt.txt:4: expected" in err
    assert "word_4.png: image word_4.png does not decode (UnidentifiedImageError" in err
    (label1, name1, _, data1), (label2, _, _, _) = records(tmp_path / "db")
    assert (label1, name1, label2) == ("Hello", "word_1.png", 'a "b"')
    assert data1 == (tmp_path / "words" / "word_1.png").read_bytes()


def test_a_wrong_image_folder_stops_the_conversion_and_leaves_no_lmdb(tmp_path, capsys):
    scene(tmp_path / "words" / "word_1.png", [], (30, 12))
    names = [f"elsewhere_{n}.png" for n in range(60)] + ["word_1.png"]
    (tmp_path / "gt.txt").write_text("".join(f'{name}, "w"\n' for name in names))
    with pytest.raises(SystemExit):
        icdar.main([str(tmp_path / "gt.txt"), str(tmp_path / "words"), str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert "none of the first 50 images was found under" in err and "wrong image folder?" in err
    assert not (tmp_path / "db").exists()


def test_cocotext_filters_and_rectifies_its_masks(tmp_path, capsys):
    quad = rotated_quad(80, 50, 60, 20, 15)
    scene(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg", [quad])
    scene(tmp_path / "train2014" / "COCO_train2014_000000000002.jpg", [])

    def ann(ann_id: int, image_id: int = 1, **fields) -> Dict:
        base = {"id": ann_id, "image_id": image_id, "bbox": [10, 10, 30, 12], "mask": flat(quad),
                "utf8_string": "word", "legibility": "legible", "language": "english", "class": "machine printed"}
        return {**base, **fields}

    anns = [ann(1, utf8_string="A&amp;W"), ann(2, mask=[]), ann(3, legibility="illegible", utf8_string=""),
            ann(4, language="not english"), ann(5, **{"class": "handwritten"}), ann(6, image_id=2),
            ann(7, image_id=9), ann(8, mask=[], bbox="wide")]
    data = {"imgs": {"1": {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "set": "train"},
                     "2": {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "set": "val"}},
            "anns": {str(a["id"]): a for a in anns}, "imgToAnns": {"1": [1, 2, 3, 4, 5, 7], "2": [6]}}
    (tmp_path / "cocotext.v2.json").write_text(json.dumps(data))
    cocotext.main([str(tmp_path / "cocotext.v2.json"), str(tmp_path / "train2014"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert ("left out: class handwritten 1, illegible 1, language not english 1, set val 1; skipped 2" in out
            and "wrote 2 records from 1 images" in out)
    assert "cocotext.v2.json:anns[7]: image 9 is not in imgs" in err and "COCO_train2014_000000000001.jpg:8" in err
    (label1, name1, img1, _), (label2, _, img2, _) = records(tmp_path / "db")
    assert (label1, name1, img1.size, label2, img2.size) == ("A&W", "COCO_train2014_000000000001.jpg:1", (60, 20),
                                                            "word", (30, 12))
    assert reads_red_then_blue(img1)


def test_textocr_polygons_curves_and_illegible_words(tmp_path, capsys):
    quad, long = rotated_quad(50, 30, 40, 14, -10), rotated_quad(120, 80, 70, 20, 5)
    scene(tmp_path / "train_images" / "a1b2.jpg", [quad, long])
    curve = np.concatenate([np.linspace(long[0], long[1], 4), np.linspace(long[2], long[3], 4)])
    anns = {"a1b2_1": {"id": "a1b2_1", "image_id": "a1b2", "bbox": [0, 0, 1, 1], "points": flat(quad),
                       "utf8_string": "Open"},
            "a1b2_2": {"id": "a1b2_2", "image_id": "a1b2", "bbox": [0, 0, 1, 1], "points": flat(curve),
                       "utf8_string": "Images"},
            "a1b2_3": {"id": "a1b2_3", "image_id": "a1b2", "bbox": [5, 5, 8, 8], "points": [],
                       "utf8_string": "box"},
            "a1b2_4": {"id": "a1b2_4", "image_id": "a1b2", "bbox": [0, 0, 9, 9], "points": flat(quad),
                       "utf8_string": "."}}
    data = {"imgs": {"a1b2": {"id": "a1b2", "file_name": "train/a1b2.jpg", "set": "train"}}, "anns": anns}
    (tmp_path / "TextOCR_0.1_train.json").write_text(json.dumps(data))
    textocr.main([str(tmp_path / "TextOCR_0.1_train.json"), str(tmp_path), str(tmp_path / "db")])
    assert "wrote 3 records from 1 images" in capsys.readouterr().out
    found = {label: img for label, _, img, _ in records(tmp_path / "db")}
    assert set(found) == {"Open", "Images", "box"}
    assert found["Open"].size == (40, 14) and found["Images"].size == (70, 20) and found["box"].size == (8, 8)
    assert reads_red_then_blue(found["Open"]) and reads_red_then_blue(found["Images"])


def test_art_keeps_legible_latin_regions(tmp_path, capsys):
    quad = rotated_quad(100, 60, 80, 24, 30)
    scene(tmp_path / "train_images" / "gt_0.jpg", [quad])
    curve = np.concatenate([np.linspace(quad[0], quad[1], 6), np.linspace(quad[2], quad[3], 6)])
    region = {"points": curve.round(2).tolist(), "transcription": "CURVED", "language": "Latin", "illegibility": False}
    labels = {"gt_0": [region, {**region, "language": "Chinese"}, {**region, "illegibility": True},
                       {**region, "transcription": "###"}, {"points": "none", "transcription": "x"}]}
    (tmp_path / "train_labels.json").write_text(json.dumps(labels))
    art.main([str(tmp_path / "train_labels.json"), str(tmp_path / "train_images"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert "wrote 1 records" in out and "left out: don't care 1, illegible 1, language Chinese 1; skipped 1" in out
    assert "gt_0:5: unreadable region" in err
    [(label, name, img, _)] = records(tmp_path / "db")
    assert (label, name, img.size) == ("CURVED", "gt_0:1", (80, 24)) and reads_red_then_blue(img)


def test_lsvt_finds_images_in_every_subfolder(tmp_path, capsys):
    quads = [rotated_quad(60, 40, 50, 16, 0)]
    scene(tmp_path / "images" / "train_full_images_0" / "gt_0.jpg", quads)
    scene(tmp_path / "images" / "train_full_images_1" / "gt_1.jpg", quads)
    region = {"points": quads[0].round(2).tolist(), "transcription": "SHOP", "illegibility": False}
    labels = {"gt_0": [region], "gt_1": [{**region, "transcription": "商店"}], "gt_2": [region]}
    (tmp_path / "train_full_labels.json").write_text(json.dumps(labels, ensure_ascii=False))
    lsvt.main([str(tmp_path / "train_full_labels.json"), str(tmp_path / "images"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert "wrote 2 records from 3 images" in out and "gt_2:1: image gt_2 not found" in err
    converted = [(label, img.size) for label, _, img, _ in records(tmp_path / "db")]
    assert converted == [("SHOP", (50, 16)), ("商店", (50, 16))]


def test_mlt19_keeps_the_scripts_asked_for(tmp_path, capsys):
    quad = rotated_quad(60, 40, 50, 16, 10)
    scene(tmp_path / "images" / "tr_img_00001.png", [quad])
    line = ",".join(map(str, flat(quad)))
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "tr_img_00001.txt").write_text(
        f"{line},Latin,Hello, world\n{line},Arabic,مرحبا\n{line},Symbols,+-\n{line},Latin,###\n{line},Latin\n")
    mlt19.main([str(tmp_path / "gt"), str(tmp_path / "images"), str(tmp_path / "db")])
    out, err = capsys.readouterr()
    assert "wrote 2 records" in out and "left out: don't care 1, script Arabic 1; skipped 1" in out
    assert "tr_img_00001.txt:5: expected 8 comma-separated coordinates and 2 more fields" in err
    assert [label for label, *_ in records(tmp_path / "db")] == ["Hello, world", "+-"]
    mlt19.main([str(tmp_path / "gt"), str(tmp_path / "images"), str(tmp_path / "arabic"), "--scripts", "Arabic"])
    assert [label for label, *_ in records(tmp_path / "arabic")] == ["مرحبا"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".txt"])
def test_union14m_lists_in_each_format(tmp_path, capsys, suffix):
    root = tmp_path / "Union14M-L"
    for name in ("a.jpg", "b.jpg"):
        scene(root / "full_images" / "art_curve" / name, [], (24, 10))
    paths = ["full_images/art_curve/a.jpg", "full_images/art_curve/b.jpg", "full_images/art_curve/c.jpg"]
    texts = ["Alpha beta", "B", "C"]
    listing = root / "train_annos" / "mmocr1.0" / f"train_easy{suffix}"
    listing.parent.mkdir(parents=True)
    if suffix == ".json":
        data_list = [{"img_path": p, "instances": [{"text": t}]} for p, t in zip(paths, texts)]
        data_list.append({"img_path": paths[0], "instances": [{"text": "x"}, {"text": "y"}]})
        listing.write_text(json.dumps({"metainfo": {"task_name": "textrecog"}, "data_list": data_list}))
    elif suffix == ".jsonl":
        listing.write_text("\n".join(json.dumps({"filename": p, "text": t}) for p, t in zip(paths, texts)) + "\n{}\n")
    else:
        listing.write_text("\n".join(f"{p}\t{t}" for p, t in zip(paths, texts)) + "\n")
    union14m.main([str(listing), str(tmp_path / "db")])  # the image root is found above train_annos/
    out, err = capsys.readouterr()
    assert "wrote 2 records from 3 images" in out and "full_images/art_curve/c.jpg: image" in err
    assert ("unreadable" in err) == (suffix != ".txt")
    converted = [(label, name) for label, name, *_ in records(tmp_path / "db")]
    assert converted == [("Alpha beta", paths[0]), ("B", paths[1])]


def test_union14m_benchmark_folder_gives_one_lmdb_per_subset(tmp_path, capsys):
    bench = tmp_path / "Union14M-Benchmarks"
    for subset, count in (("curve", 2), ("multi_words", 3)):
        for n in range(count):
            scene(bench / subset / "imgs" / f"{n}.jpg", [], (20, 8))
        data_list = [{"img_path": f"{subset}/imgs/{n}.jpg", "instances": [{"text": f"{subset}{n}"}]}
                     for n in range(count)]
        (bench / subset / "annotation.json").write_text(json.dumps({"data_list": data_list}))
    union14m.main([str(bench), str(tmp_path / "test" / "Union14M-Benchmarks")])
    assert capsys.readouterr().out.count("wrote") == 2
    assert [label for label, *_ in records(tmp_path / "test" / "Union14M-Benchmarks" / "multi_words")] == \
        ["multi_words0", "multi_words1", "multi_words2"]


def test_case_sensitive_layout_rebuilds_the_real_sample_as_it_came(tmp_path, capsys):
    # SVT's records 1-12 as the real data has them (tests/data/README.md): index, image, label, source name.
    originals = [(int(Path(name).stem), (REAL_SAMPLE / "SVT" / name).read_bytes(), label, f"svt_test/IMG/{name}")
                 for _, name, label in read_label_list(REAL_SAMPLE / "SVT" / "labels.tsv")][:12]
    folder = tmp_path / "source" / "svt_test"
    (folder / "IMG").mkdir(parents=True)
    (folder / "label").mkdir()
    for index, image, label, _ in reversed(originals):
        (folder / "IMG" / f"{index}.jpg").write_bytes(image)
        (folder / "label" / f"{index}.txt").write_text(label + "\n")
    (folder / "label" / "13.txt").write_text("orphan\n")
    case_sensitive.main([str(tmp_path / "source"), str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert "wrote 12 records from 12 images" in out and "svt_test/label/13.txt: no image IMG/13.*" in err
    rebuilt = [(index, image, label, name) for index, image, label, name in read_records(tmp_path / "out" / "svt_test")]
    assert rebuilt == originals  # same order (numeric, not 1, 10, 11, ...), bytes, labels and names


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    def broken():
        yield b"a", "one"
        yield b"b", "two"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_lmdb(tmp_path / "db", broken())
    assert list(tmp_path.iterdir()) == []
    write_lmdb(tmp_path / "db", [(b"x", "kept", "x.png")])
    with pytest.raises(OSError):
        write_lmdb(tmp_path / "db", broken(), overwrite=True)
    assert [(label, name) for _, _, label, name in read_records(tmp_path / "db")] == [("kept", "x.png")]
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_filter_lmdb_drops_by_charset_length_size_and_key_and_keeps_the_input(tmp_path, capsys):
    def png(width: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, 10)).save(buffer, "PNG")
        return buffer.getvalue()

    labels = ["abc", "ABC", "a-b", "a b", "x", "abcdefg", "tiny", "listed", "also"]
    widths = [20, 20, 20, 20, 20, 20, 5, 20, 20]
    write_lmdb(tmp_path / "in", [(png(w), label, f"n{i}") for i, (w, label) in enumerate(zip(widths, labels), 1)])
    before = (tmp_path / "in" / "data.mdb").read_bytes()
    (tmp_path / "keys.txt").write_text("# overlaps\nimage-000000008\n9\n")
    filter_lmdb.main([str(tmp_path / "in"), str(tmp_path / "out"), "--charset", "36", "--min-length", "2",
                      "--max-length", "6", "--min-width", "10", "--drop-keys", str(tmp_path / "keys.txt")])
    assert capsys.readouterr().out.strip().endswith(
        "kept 2 of 9 records of {0} in {1}; dropped: characters outside the charset 2, listed 2, too long 1, "
        "too short 1, too small 1".format(tmp_path / "in", tmp_path / "out"))
    assert [(i, label, name) for i, _, label, name in read_records(tmp_path / "out")] == [(1, "abc", "n1"),
                                                                                         (2, "a b", "n4")]
    assert (tmp_path / "in" / "data.mdb").read_bytes() == before
    (tmp_path / "keys.txt").write_text("image-000000010\n")
    with pytest.raises(SystemExit):
        filter_lmdb.main([str(tmp_path / "in"), str(tmp_path / "again"), "--drop-keys", str(tmp_path / "keys.txt")])
    assert f"{tmp_path / 'keys.txt'}:1: 'image-000000010' is not a record index" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        filter_lmdb.main([str(tmp_path / "in"), str(tmp_path / "in" / "sub")])
    assert "must lie outside the input" in capsys.readouterr().err


@pytest.mark.parametrize("module", [f"strhub.tools.convert.{name}" for name in CONVERTERS])
def test_every_converter_runs_as_a_module_with_help(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module.rsplit(".", 1)[1], "--help"])
    monkeypatch.delitem(sys.modules, module, raising=False)  # run it fresh, as `python -m` does
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage:") and len(out.splitlines()) > 8
