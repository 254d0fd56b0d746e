"""The one check of the settings a user types, wherever they are typed (train.py and bench.py overrides, test.py
and read.py `name:type=value` arguments, `create_model`, `load_model`, `load_from_checkpoint`): a key that is not
known is refused with the closest known names, and a value that does not fit the key's type is refused, naming
the key. Imports neither Lightning nor the models."""
import collections.abc
import difflib
import inspect
import typing
from typing import Any, Callable, Dict, Iterable, List, Mapping, Union


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


def parameters(target: Callable, *extra: str) -> Dict[str, Any]:
    """The named parameters of `target` (of its constructor, for a class) with their annotations, `Any` where it
    has none, and the `extra` names a `**kwargs` of it takes on purpose."""
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    named = [name for name, parameter in inspect.signature(target).parameters.items()
             if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    return {name: hints.get(name, Any) for name in [*named, *extra]}


def fits(value: Any, annotation: Any) -> bool:
    """Whether `value` (plain config data) fits a parameter annotation; annotations it cannot judge fit anything."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return any(fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and all(fits(item, args[0]) for item in value if args)
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, Mapping)
    return True


def type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def unknown_keys(given: Iterable[str], known: Iterable[str], prefix: str = "") -> List[str]:
    """The keys of `given` that are not `known`, each shown after `prefix` (e.g. `model.`, as the user typed it)
    with the closest known names: `'model.lrr' (did you mean 'model.lr'?)`."""
    known = list(known)
    shown = []
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {' or '.join(repr(prefix + name) for name in close)}?)" if close else ""
            shown.append(f"{prefix + key!r}{hint}")
    return shown


def check_keys(given: Mapping[str, Any], known: Union[Mapping[str, Any], Iterable[str]], what: str,
               prefix: str = "") -> None:
    """Raises ConfigError for the keys of `given` that are not `known` (see `unknown_keys`), or else for the first
    value that does not fit the annotation `known` gives its key (a list of names checks names alone)."""
    annotations = dict(known) if isinstance(known, Mapping) else dict.fromkeys(known, Any)
    unknown = unknown_keys(given, annotations, prefix)
    if unknown:
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}")
    for key, value in given.items():
        if not fits(value, annotations[key]):
            raise ConfigError(f"{prefix}{key} must be {type_name(annotations[key])}, got {value!r} "
                              f"({type(value).__name__})")
