"""What the entry points share: the arguments they all take (a checkpoint, images, `name:type=value` model
overrides, a device and precision, counts that must be positive), and the one error policy: a mistake of the
user's (a key, value, file, checkpoint, device or option that cannot be used) ends the command with one line,
`<command>: error: <what and where>`, exit status 2, and never a traceback."""
import argparse
import contextlib
import glob
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

from strhub.host import INFERENCE_PRECISIONS
from strhub.keys import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODEL_ARG = re.compile(r"^\w+:\w+=")
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


# The exceptions of each layer that report a user's mistake, by module (a module not imported raised none of them).
USER_ERRORS = {"strhub.models.safe_load": "InvalidCheckpointError", "strhub.evaluation.groups": "GroupError",
               "strhub.deploy.export": "ExportError", "strhub.training.callbacks": "TrainingError",
               "strhub.evaluation.evaluate": "EvaluationError", "strhub.evaluation.reports": "ReportWriteError"}


def user_errors() -> Tuple[type, ...]:
    """The exceptions that report a user's mistake in one line, from every layer imported so far."""
    found = [getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules]
    return (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError, *found)


def fail(command: str, message: str) -> None:
    """Ends the process with one line on stderr, `<command>: error: <message>`, and exit status 2."""
    print(f"{command}: error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def reported(command: str) -> Iterator[None]:
    """Turns a user's mistake raised inside the block (see `user_errors`) into `fail`'s one line."""
    try:
        yield
    except user_errors() as err:
        fail(command, str(err))


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (the option is named in argparse's refusal)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


class Parser(argparse.ArgumentParser):
    """argparse with the project's error policy: a refusal is one line (no usage block), exit status 2."""

    def __init__(self, description: str, **kwargs: Any) -> None:
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(self.prog, message)

    def add_checkpoint(self, help_extra: str = "") -> None:
        self.add_argument("checkpoint", type=Path,
                          help=f"checkpoint file, a run folder (its best checkpoint) or a released checkpoint's name "
                               f"(docs/released_models.md){help_extra}")

    def add_device(self, precision: bool = True) -> None:
        self.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
        if precision:
            self.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="32",
                              help="inference precision: 32, bf16 (weights stored in bfloat16 once), 16 (autocast), "
                                   "or auto: bf16 where the CPU or GPU multiplies bfloat16 natively, else 32 (it says "
                                   "which)")

    def parse_with_model_args(self, argv: Sequence[str]) -> Tuple[argparse.Namespace, Dict[str, Any]]:
        """The options, and the model overrides written `name:type=value` anywhere among them."""
        args = self.parse_intermixed_args([a for a in argv if not MODEL_ARG.match(a)])
        try:
            return args, parse_model_args([a for a in argv if MODEL_ARG.match(a)])
        except ConfigError as err:
            self.error(str(err))


def _boolean(value: str) -> bool:
    if value.lower() not in BOOLEANS:
        raise ValueError(value)
    return BOOLEANS[value.lower()]


def _int_list(value: str) -> List[int]:
    return [int(item) for item in value.strip("[]").split(",") if item.strip()]


def parse_model_args(args: Iterable[str]) -> Dict[str, Any]:
    """Model overrides written as `name:type=value` (type: int, float, str, bool (true/false, 1/0, yes/no, on/off),
    or list of ints written `[1,3,5]`, such as `block_ids:list=[1,3,5]`); ConfigError for another form."""
    casts = {"int": int, "float": float, "str": str, "bool": _boolean, "list": _int_list}
    kwargs = {}
    for arg in args:
        try:
            name, value = arg.split("=", 1)
            name, type_name = name.split(":")
            kwargs[name] = casts[type_name](value)
        except (ValueError, KeyError):
            raise ConfigError(f"model override {arg!r} is not of the form name:type=value with type in "
                              f"{sorted(casts)} (bool: {'/'.join(BOOLEANS)})") from None
    return kwargs


def list_images(inputs: List[str]) -> Iterator[Tuple[str, Path]]:
    """(printed name, path) of every image: folders recursively in name order, then files and globs as given."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif any(char in item for char in "*?["):
            yield from ((match, Path(match)) for match in sorted(glob.glob(item, recursive=True)))
        else:
            yield item, path
