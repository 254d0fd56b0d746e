"""The one way checkpoint files are read: PyTorch's weights-only unpickler, which refuses every class and function
outside its allow-list, whatever the file's format (zip, legacy or a raw pickle). Nothing here needs Lightning."""
import collections
import pathlib
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

# Lightning stores hyper-parameters as an `AttributeDict` (a dict with attribute access); read it as a plain dict
# under each module path Lightning has given it, so that no Lightning class is ever imported or built.
ATTRIBUTE_DICT_PATHS = ("pytorch_lightning.utilities.parsing.AttributeDict",
                        "lightning_fabric.utilities.data.AttributeDict",
                        "lightning.pytorch.utilities.parsing.AttributeDict",
                        "lightning.fabric.utilities.data.AttributeDict")
SAFE_GLOBALS = [(dict, path) for path in ATTRIBUTE_DICT_PATHS] + [collections.defaultdict, pathlib.PosixPath,
                                                                   pathlib.WindowsPath]
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n|$)")


class InvalidCheckpointError(ValueError):
    """The file is not a CLIP4STR checkpoint, or not one that can be read safely."""


def safe_load(path: Union[str, Path], map_location: Any = "cpu", mmap: bool = False) -> Any:
    """The object saved in a checkpoint file, read with `torch.load(weights_only=True)`: tensors, containers and
    plain values only (plus Lightning's `AttributeDict`, read as a dict). With `mmap`, a zip checkpoint's tensors
    are mapped rather than read, which checks that the whole file is readable at little cost.

    Raises FileNotFoundError for a missing file and InvalidCheckpointError, naming the file, for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a raw pickle: refused just below
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - whatever the file makes torch raise, it is not a usable checkpoint
        match = _WEIGHTS_ONLY_REASON.search(str(err))
        if match:
            raise InvalidCheckpointError(f"refusing to load {path}: it is not made of tensors and plain values only, "
                                         f"all that PyTorch's weights-only reader accepts ({match.group(1)})") from None
        raise InvalidCheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or another "
                                     f"format): {type(err).__name__}: {err}") from None
