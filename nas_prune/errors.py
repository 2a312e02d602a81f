"""The one exception type for bad user input.

Library code raises :class:`NasPruneError` for input a user can fix (unknown model, missing data, bad
budget, foreign checkpoint); every ``python -m nas_prune.*`` entry point turns it into one stderr line and
exit code 2 (:func:`nas_prune.cli.run_cli`). It lives here, not in the CLI plumbing, so that the core
never imports command-line code.
"""

from __future__ import annotations

__all__ = ["NasPruneError"]


class NasPruneError(ValueError):
    """A problem with the user's input (unknown model, missing data, bad budget, foreign checkpoint)."""
