"""Character tokenizer, charset adapter and the CLIP caption tokenizer."""
import pytest
import torch
import torch.nn.functional as F

from strhub.models.towers.clip import CaptionTokenizer
from strhub.tokenizer import CHARSET_36, CHARSET_94, CharsetAdapter, Tokenizer, load_charset


def _one_hot(tokenizer: Tokenizer, ids):
    return F.one_hot(torch.tensor(ids), len(tokenizer) - 2).float()


def test_vocabulary_order_and_encoding():
    tokenizer = Tokenizer(CHARSET_94)
    assert (tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id, len(tokenizer)) == (0, 95, 96, 97)
    assert tokenizer.encode(["ab", "x"]).tolist() == [[95, 11, 12, 0], [95, 34, 0, 96]]
    assert Tokenizer(CHARSET_36).bos_id == 37


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="'é'"):
        Tokenizer(CHARSET_36).encode(["café"])


def test_decode_round_trip_cuts_at_eos_and_keeps_its_probability():
    tokenizer = Tokenizer(CHARSET_94)
    labels = ["hello", "World!", "[E]x", "a"]
    for label in labels:
        ids = tokenizer.encode([label])[0, 1:].tolist()
        probs = _one_hot(tokenizer, ids + [5])[None] * 0.5 + 0.001
        strings, confidences = tokenizer.decode(probs)
        assert strings == [label]
        assert len(confidences[0]) == len(label) + 1


def test_decode_without_eos_keeps_every_position():
    tokenizer = Tokenizer(CHARSET_36)
    strings, probs = tokenizer.decode(_one_hot(tokenizer, [11, 12, 13])[None])
    assert strings == ["abc"] and len(probs[0]) == 3


def test_decode_fast_cuts_at_the_eos_substring():
    tokenizer = Tokenizer(CHARSET_94)
    ids = tokenizer.encode(["ab[E]cd"])[0, 1:].tolist()
    probs = _one_hot(tokenizer, ids)[None]
    assert tokenizer.decode(probs)[0] == ["ab[E]cd"]
    captions, caption_probs = tokenizer.decode_fast(probs)
    assert captions == ["ab"] and len(caption_probs[0]) == 3
    assert tokenizer.decode_fast(probs, CharsetAdapter(CHARSET_36))[0] == ["ab"]


def test_charset_adapter():
    assert CharsetAdapter(CHARSET_36)("Hello, World-42!") == "helloworld42"
    assert CharsetAdapter(CHARSET_94)("Héllo wörld") == "Hllowrld"
    assert CharsetAdapter("ABC")("abcd") == "ABC"


def test_charset_file(tmp_path):
    path = tmp_path / "chars.txt"
    path.write_text("a\n \n中\n\nb\na\n", encoding="utf-8")
    assert load_charset(str(path)) == "a 中b"
    path.write_text("ab\n", encoding="utf-8")
    with pytest.raises(ValueError, match="chars.txt:1"):
        load_charset(str(path))
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        load_charset(str(tmp_path / "nothing.txt"))


@pytest.mark.parametrize("caption, expected", [
    ("", [49406, 49407]),
    ("a", [49406, 320, 49407]),
    ("chicken", [49406, 3717, 49407]),
    ("hello", [49406, 3306, 49407]),
    ("aishahaleyesblogspotcom", [49406, 2014, 1514, 1296, 5034, 82, 16376, 3223, 2464, 49407]),
    ("a<|endoftext|>b", [49406, 320, 49407, 321, 49407]),
])
def test_caption_tokens(caption, expected):
    ids = CaptionTokenizer(16)([caption], 16)[0].tolist()
    assert ids == expected + [0] * (16 - len(expected))


def test_caption_truncation_ends_with_eot():
    ids = CaptionTokenizer(16)(["0123456789012345678901234"], 16)[0].tolist()
    assert ids[0] == 49406 and ids[15] == 49407
    assert ids[1:15] == [271 + int(d) for d in "01234567890123"]


def test_open_clip_specials_are_plain_text():
    ids = CaptionTokenizer(16)(["<end_of_text>"], 16)[0].tolist()
    assert ids.count(49407) == 1
