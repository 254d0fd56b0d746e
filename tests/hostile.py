"""A hostile pickle for the tests of checkpoint loading: what a malicious file would carry."""
from pathlib import Path


class Payload:
    """Unpickling it creates the file `marker`: the stand-in for `os.system(...)` in a hostile file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")
