"""strhub: scene text recognition with CLIP4STR."""

__version__ = "1.0.0"
