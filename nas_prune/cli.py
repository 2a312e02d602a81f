"""Command-line plumbing shared by every ``python -m nas_prune.*`` entry point.

Bad input must end with one clear line on stderr and exit code 2, never a traceback (DESIGN.md).
Library code raises :class:`NasPruneError` for such input; :func:`run_cli` turns it into that line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import NasPruneError

__all__ = ["ArgumentParser", "ensure_output_dir", "run_cli"]


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
