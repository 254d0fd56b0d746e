"""The weights of a TorchScript archive (OpenAI's CLIP `.pt` files), read without running anything from the file.

`torch.jit.load` compiles and runs the code an archive carries. Its tensors, though, sit in the archive's `data.pkl`
(module objects whose attributes are tensors) and `data/` storages; this module unpickles `data.pkl` with an
allow-list as narrow as PyTorch's weights-only reader (tensor rebuilds, storages, ordered dicts, TorchScript's list
builders), reads each module class's `__parameters__` and `__buffers__` declarations as text, and returns what
`torch.jit.load(path).state_dict()` would: every parameter and buffer by its dotted name.
"""
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

from strhub.models.safe_load import InvalidCheckpointError

STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in {
    "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16, "Double": torch.float64,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128}.items()}
_DECLARATION = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n  __buffers__ = \[([^\]]*)\]",
                          re.MULTILINE)


class ScriptModuleState:
    """A TorchScript module object of `data.pkl`: its qualified class name and its attributes, nothing more."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any) -> Tensor:
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError("a tensor is rebuilt from something other than a storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    return data


def _same(value: Any, *_: Any) -> Any:
    return value


SAFE_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch.jit._pickle", name): _same for name in ("build_intlist", "build_floatlist", "build_boollist",
                                                        "build_tensorlist", "build_doublelist", "build_complexlist",
                                                        "restore_type_tag")},
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`: storages come from the archive's `data/` records; no other global than the allow-list."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_FUNCTIONS:
            return SAFE_FUNCTIONS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module.startswith("__torch__.") and name.isidentifier():
            return type(name, (ScriptModuleState,), {"qualified_name": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"the global {module}.{name} is not a tensor, a storage or a module's state")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            storage = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if storage.numel() < numel:
                raise pickle.UnpicklingError(f"storage {key} holds {storage.numel()} of its {numel} elements")
            self.storages[key] = storage
        return self.storages[key]


def read_torchscript_weights(path: Path) -> Dict[str, Tensor]:
    """Every parameter and buffer of a TorchScript archive, by dotted name, on the CPU.

    Raises InvalidCheckpointError, naming the file, for an archive that is not made of module state and tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            data_pkl = next((name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")), None)
            if data_pkl is None:
                raise pickle.UnpicklingError("it has no <folder>/data.pkl")
            prefix = data_pkl[:-len("data.pkl")]
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
                raise pickle.UnpicklingError("its tensors are stored big-endian")
            root = _ArchiveUnpickler(archive, prefix, archive.read(data_pkl)).load()
            declarations = _declarations(archive, prefix, names)
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError, RuntimeError,
            AttributeError, IndexError) as err:
        raise InvalidCheckpointError(f"refusing to load {path}: it is not a TorchScript archive of tensors and module "
                                     f"state only ({type(err).__name__}: {err})") from None
    if not isinstance(root, ScriptModuleState):
        raise InvalidCheckpointError(f"{path} is not a TorchScript module archive (its data.pkl holds no module)")
    state_dict: Dict[str, Tensor] = {}
    _collect(root, "", declarations, state_dict)
    return state_dict


def _declarations(archive: zipfile.ZipFile, prefix: str, names: List[str]) -> Dict[str, List[str]]:
    """The names of the parameters and buffers each module class declares, read as text from `code/`."""
    found = {}
    for name in names:
        if name.startswith(f"{prefix}code/") and name.endswith(".py"):
            module = name[len(f"{prefix}code/"):-len(".py")].replace("/", ".")
            for match in _DECLARATION.finditer(archive.read(name).decode("utf-8", "replace")):
                found[f"{module}.{match.group(1)}"] = re.findall(r'"([^"]+)"', match.group(2) + match.group(3))
    return found


def _collect(module: ScriptModuleState, prefix: str, declarations: Dict[str, List[str]],
             state_dict: Dict[str, Tensor]) -> None:
    """Adds the module's declared tensors (all its tensors where its class declares none) and its children's."""
    attributes = getattr(module, "attributes", {})
    declared = declarations.get(module.qualified_name)
    for name, value in attributes.items():
        if isinstance(value, Tensor) and (declared is None or name in declared):
            state_dict[f"{prefix}{name}"] = value
        elif isinstance(value, ScriptModuleState):
            _collect(value, f"{prefix}{name}.", declarations, state_dict)
