"""Character tokenizer and charset handling shared by the data pipeline and the models."""
import re
import string
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

CHARSET_36 = string.digits + string.ascii_lowercase
CHARSET_62 = CHARSET_36 + string.ascii_uppercase
CHARSET_94 = CHARSET_62 + string.punctuation


def load_charset(path: str) -> str:
    """Read a charset file with one character per line, in NFC (a letter and its combining marks
    written decomposed count as the one precomposed character, as labels are read). Blank lines are
    ignored; a line holding a single space counts as the space character. Duplicates keep their first
    position."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"charset file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    chars: Dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        char = " " if line == " " else unicodedata.normalize("NFC", line.strip())
        if len(char) != 1:
            raise ValueError(f"{file}:{number}: expected one character per line, got {line!r}")
        chars.setdefault(char)
    if not chars:
        raise ValueError(f"charset file {file} holds no characters")
    return "".join(chars)


class CharsetAdapter:
    """Maps a label onto a target charset: case folding for single-case charsets, then removal of
    every character the charset lacks."""

    def __init__(self, target_charset: str) -> None:
        self.charset = target_charset
        self.lowercase_only = target_charset == target_charset.lower()
        self.uppercase_only = target_charset == target_charset.upper()
        self.unsupported = re.compile(f"[^{re.escape(target_charset)}]")

    def fold(self, label: str) -> str:
        """The label in the charset's case: lower (upper) case when the charset has no upper (lower) case."""
        if self.lowercase_only:
            return label.lower()
        if self.uppercase_only:
            return label.upper()
        return label

    def outside(self, label: str) -> List[str]:
        """The characters that the adapter removes from `label`, in order."""
        return self.unsupported.findall(self.fold(label))

    def __call__(self, label: str) -> str:
        return self.unsupported.sub("", self.fold(label))


class Tokenizer:
    """Character tokenizer: EOS is id 0, the charset follows, then BOS and PAD."""

    EOS = "[E]"
    BOS = "[B]"
    PAD = "[P]"

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self._itos: Tuple[str, ...] = (self.EOS,) + tuple(charset) + (self.BOS, self.PAD)
        self._stoi = {s: i for i, s in enumerate(self._itos)}
        self.eos_id, self.bos_id, self.pad_id = 0, len(charset) + 1, len(charset) + 2

    def __len__(self) -> int:
        return len(self._itos)

    def encode(self, labels: Sequence[str], device: Optional[torch.device] = None) -> Tensor:
        """`[BOS] + ids + [EOS]` per label, right-padded with PAD to the longest: (N, T + 2)."""
        try:
            batch = [torch.as_tensor([self.bos_id] + [self._stoi[c] for c in label] + [self.eos_id],
                                     dtype=torch.long, device=device) for label in labels]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the tokenizer's charset") from None
        return pad_sequence(batch, batch_first=True, padding_value=self.pad_id)

    def ids_to_string(self, ids: Sequence[int]) -> str:
        return "".join(self._itos[i] for i in ids)

    def decode(self, token_dists: Tensor) -> Tuple[List[str], List[Tensor]]:
        """Greedy decoding of (N, L, C) probabilities: each string is cut before its first EOS, and
        its probabilities keep the EOS position (all positions when there is no EOS)."""
        strings, probs = [], []
        max_probs, max_ids = token_dists.max(-1)
        for sample_probs, ids in zip(max_probs, max_ids.tolist()):
            length = ids.index(self.eos_id) if self.eos_id in ids else len(ids)
            strings.append(self.ids_to_string(ids[:length]))
            probs.append(sample_probs[:length + 1])
        return strings, probs

    def read(self, token_dists: Tensor) -> Tuple[List[str], List[float]]:
        """The strings that `decode` gives and their confidences, the product of each string's probabilities."""
        strings, probs = self.decode(token_dists)
        return strings, [prob.prod().item() for prob in probs]

    def decode_fast(self, token_dists: Tensor,
                    charset_adapter: Optional[CharsetAdapter] = None) -> Tuple[List[str], List[Tensor]]:
        """Caption decoding as the original does it (see `captions`), with each caption's probabilities up to
        its cut."""
        max_probs, max_ids = token_dists.max(-1)
        texts = self._cut_at_eos(max_ids)
        probs = [sample_probs[:len(text) + 1] for sample_probs, text in zip(max_probs, texts)]
        return self._adapted(texts, charset_adapter), probs

    def captions(self, ids: Tensor, charset_adapter: Optional[CharsetAdapter] = None) -> List[str]:
        """The captions of class ids (N, L), as the original makes them: all ids, EOS rendered as the text `[E]`,
        are joined and the string is cut at the first `[E]` substring (a genuine `[`, `E`, `]` sequence cuts it
        too), then the adapter is applied."""
        return self._adapted(self._cut_at_eos(ids), charset_adapter)

    def _cut_at_eos(self, ids: Tensor) -> List[str]:
        return [self.ids_to_string(sample).partition(self.EOS)[0] for sample in ids.tolist()]

    @staticmethod
    def _adapted(texts: List[str], charset_adapter: Optional[CharsetAdapter]) -> List[str]:
        return [charset_adapter(text) for text in texts] if charset_adapter is not None else texts
