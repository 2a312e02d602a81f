"""Import a user's ``"pkg.module:factory"`` (a model or a dataset), with one-line errors."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import NasPruneError

__all__ = ["import_factory"]


def import_factory(path: str, what: str, choices: str = "") -> Callable[..., Any]:
    """Return the callable named by ``"pkg.module:attr[.attr]"``.

    Args:
        path: The reference, e.g. ``"mypkg.nets:resnet"``.
        what: What it builds, for messages (``"model"``, ``"dataset"``).
        choices: Appended as ``"; choose {choices}"`` to messages that should list the built-in names.

    Raises:
        NasPruneError: not of the form ``pkg.module:factory``, the module cannot be imported (any error
            inside it too), the attribute is missing, or it is not callable.
    """
    hint = f"; choose {choices}" if choices else ""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise NasPruneError(f"{what} {path!r} is not of the form pkg.module:factory{hint}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, but also a SyntaxError etc. in the user's module
        raise NasPruneError(
            f"cannot import module {module_name!r} for {what} {path!r} ({type(err).__name__}: {err}){hint}"
        ) from err
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise NasPruneError(
                f"module {module_name!r} has no attribute {attr!r}; its callables are: "
                f"{', '.join(public) or 'none'}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise NasPruneError(f"{what} factory {path!r} is a {type(factory).__name__}, not a callable")
    return factory
