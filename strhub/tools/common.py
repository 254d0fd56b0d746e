"""Helpers shared by the command-line tools."""
import argparse
import contextlib
import sys
import warnings
from typing import Iterator

from tqdm import tqdm

from strhub.tokenizer import CHARSET_36, CHARSET_62, CHARSET_94, load_charset

CHARSET_PRESETS = {"36": CHARSET_36, "62": CHARSET_62, "94": CHARSET_94}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows the options' defaults (except unset ones and flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        unset = action.default is None or action.default is False or action.default == ()
        return action.help if unset else super()._get_help_string(action)


def add_charset_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """`--charset` (a preset 36/62/94 or the characters themselves) and `--charset-file` (one per line)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--charset", default=default,
                       help=f"preset {'/'.join(CHARSET_PRESETS)} or the characters themselves")
    group.add_argument("--charset-file", help="charset file, one character per line")


def charset_from_args(args: argparse.Namespace) -> str:
    if args.charset_file:
        return load_charset(args.charset_file)
    return CHARSET_PRESETS.get(args.charset, args.charset)


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Show every warning raised inside as one plain `warning: ...` line on stderr (above any progress bar)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_args, **_kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
        yield


