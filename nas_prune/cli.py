"""Command-line plumbing shared by every ``python -m nas_prune.*`` entry point.

Each entry point has a typed, frozen config dataclass whose fields carry their help text (:func:`option`);
:func:`config_flags` generates the parser from it, so a default is written once, in the dataclass.

Bad input must end with one clear line on stderr and exit code 2, never a traceback.
Library code raises :class:`NasPruneError` for such input; :func:`run_cli` turns it into that line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import NasPruneError

__all__ = [
    "ArgumentParser",
    "config_flags",
    "config_from_mapping",
    "ensure_output_dir",
    "given_flags",
    "option",
    "run_cli",
    "warnings_as_lines",
]


def ensure_output_dir(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Create the output folder ``path`` (and its parents) before any heavy work.

    Raises:
        NasPruneError: ``path`` is an existing file, or the folder cannot be created (a file in the way,
            no permission).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NasPruneError(f"{flag} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NasPruneError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from None
    return path


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) and exit code 2, without the usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`NasPruneError` becomes one stderr line and exit code 2."""
    try:
        main(argv)
    except NasPruneError as err:
        module = sys.modules.get(getattr(main, "__module__", ""))
        spec = getattr(module, "__spec__", None)  # "nas_prune.train" also under ``python -m``
        prog = spec.name.removesuffix(".cli") if spec is not None else "nas_prune"  # a package's CLI module
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field that is also a command-line flag: ``lr: float = option(0.1, "peak learning rate")``.

    ``help`` is the flag's text; ``--help`` appends the default itself (omit it with ``show_default=False``
    for defaults that are computed, e.g. ``None`` meaning "from the model"). Other keyword arguments go to
    ``add_argument`` (``choices``, ``metavar``, ``nargs``), plus ``group`` (the help section) and
    ``flag`` (a different flag name) and ``cli=False`` (a setting with no flag).
    """
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


def config_flags(parser: argparse.ArgumentParser, config_type: type) -> argparse.ArgumentParser:
    """Add one flag per field of the dataclass ``config_type``, typed and documented from the field.

    Flags default to "not given" (``None``), so :func:`given_flags` returns only what the user typed and
    the dataclass stays the one place a default is written. Booleans that default to False are switches
    (``--distill``); those that default to True get a ``--no-`` form (``--no-progress``).
    """
    hints = typing.get_type_hints(config_type)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(config_type):
        meta = dict(f.metadata)
        if "help" not in meta or not meta.pop("cli", True):
            continue
        title = meta.pop("group", None)
        target = groups.setdefault(title, parser.add_argument_group(title)) if title else parser
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_text = meta.pop("help")
        if meta.pop("show_default", True) and f.default is not None:
            help_text += f" (default {_shown(f.default)})"
        kind, many = _flag_type(hints[f.name])
        if kind is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            target.add_argument(flag, dest=f.name, action=action, default=None, help=help_text, **meta)
            continue
        if many:
            meta.setdefault("nargs", "+")
        target.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text, **meta)
    return parser


def given_flags(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The config fields the user gave on the command line (lists as tuples), ready for ``replace``."""
    names = {f.name for f in dataclasses.fields(config_type)}
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if k in names and v is not None
    }


def config_from_mapping(
    config_type: type, settings: Mapping[str, Any], where: str, retired: Sequence[str] = ()
) -> Any:
    """Build ``config_type`` from a mapping (a config.yaml's settings); lists become tuples.

    Raises:
        NasPruneError: a key that is not a field (and not one of the ``retired`` names older versions
            wrote, which are dropped so older run directories still read).
    """
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(settings) - fields - set(retired))
    if unknown:
        raise NasPruneError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    return config_type(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields}
    )


def _flag_type(hint: Any) -> tuple[type, bool]:
    """(element type, is a tuple) of a field annotation such as ``float | None`` or ``tuple[str, ...]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    if args:  # Optional[X] / X | None
        return _flag_type(args[0])
    return hint, False


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(_shown(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Inside: each warning is one ``warning: <message>`` line on stderr, without the source line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
