"""Kept for code written against earlier versions: the tokenizer and charsets live in `strhub.tokenizer`."""
from strhub.tokenizer import CHARSET_36, CHARSET_62, CHARSET_94, CharsetAdapter, Tokenizer, load_charset

__all__ = ["CHARSET_36", "CHARSET_62", "CHARSET_94", "CharsetAdapter", "Tokenizer", "load_charset"]
