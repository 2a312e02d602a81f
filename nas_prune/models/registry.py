"""What a model name means: the ``@register_model`` registry, ``pkg.module:factory`` loading, the
plain-data *spec* a run directory rebuilds a model from, and the per-model search-space YAML.

A spec is ``{"model", "kwargs", "input_shape"}`` of plain data (see :func:`model_spec`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml
from torch import nn

from nas_prune.errors import NasPruneError
from nas_prune.factory import import_factory
from nas_prune.plain import check_plain

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""Zoo name -> factory ``(in_channels=3, num_classes=10) -> nn.Module``."""

SEARCH_SPACE_DIR = resources.files("nas_prune") / "search_spaces"
"""Where ``<model>.yaml`` live: package data (``nas_prune/search_spaces/``), read through
:mod:`importlib.resources` so an installed wheel finds them as a source checkout does."""


# ---------------------------------------------------------------------------------------------------
# Registry and factories
# ---------------------------------------------------------------------------------------------------


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory in :data:`MODELS` under the function's name.

    Args:
        fn: Factory taking ``in_channels`` and ``num_classes`` keyword arguments.

    Returns:
        ``fn`` unchanged, so this works as a decorator.
    """
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    MODELS[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    """Return the sorted names of the registered zoo models."""
    return sorted(MODELS)


def _choices() -> str:
    return ", ".join(model_names()) + ", or pkg.module:factory"


def _accepted_kwargs(factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep the keyword arguments ``factory`` accepts.

    ``in_channels`` and ``num_classes`` are dropped silently when the factory does not take them (it
    fixes them itself); any other unaccepted argument was asked for explicitly and is an error.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: pass everything
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    names = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(k for k in kwargs if k not in names and k not in ("in_channels", "num_classes"))
    if unknown:
        raise NasPruneError(
            f"model {name!r} does not accept {', '.join(unknown)}; it accepts: {', '.join(sorted(names))}"
        )
    return {k: v for k, v in kwargs.items() if k in names}


def create_model(name: str, in_channels: int = 3, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a ``"pkg.module:factory"`` path.

    Args:
        name: A name from :func:`model_names` or ``"pkg.module:factory"``. The factory is called with
            ``in_channels``, ``num_classes`` and ``kwargs``, restricted to the ones its signature takes.
        in_channels: Channels of the input images.
        num_classes: Size of the classifier output.
        **kwargs: Extra keyword arguments for the factory.

    Returns:
        The new model (fresh weights).

    Raises:
        NasPruneError: Unknown name, an import that fails, a factory that is not callable, rejects the
            given arguments or does not return an ``nn.Module``.
    """
    if ":" in name:
        factory = import_factory(name, "model", _choices())
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise NasPruneError(f"unknown model {name!r}; choose {_choices()}")
    all_kwargs = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    model = factory(**_accepted_kwargs(factory, name, all_kwargs))
    if not isinstance(model, nn.Module):
        raise NasPruneError(
            f"model factory {name!r} returned a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def default_model(dataset: str) -> str:
    """A zoo CNN suited to the dataset and a laptop CPU: ``convnet`` for 28x28 sets, else ``resnet20``."""
    return "convnet" if dataset in ("fashion-mnist", "mnist", "synthetic") else "resnet20"


# ---------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------


def model_spec(
    name: str, in_channels: int, num_classes: int, input_shape: tuple[int, ...] | list[int], **kwargs: Any
) -> dict[str, Any]:
    """Describe a model as plain data, as stored in ``model.pt`` under ``"spec"``.

    Args:
        name: Zoo name or ``"pkg.module:factory"``.
        in_channels: Channels of the input images.
        num_classes: Size of the classifier output.
        input_shape: One sample's shape ``[C, H, W]`` (no batch dimension).
        **kwargs: Extra factory arguments (plain data only).

    Returns:
        ``{"model": name, "kwargs": {"in_channels", "num_classes", ...}, "input_shape": [C, H, W]}``.
    """
    spec = {
        "model": str(name),
        "kwargs": {"in_channels": int(in_channels), "num_classes": int(num_classes), **kwargs},
        "input_shape": [int(d) for d in input_shape],
    }
    check_plain(spec, "spec")
    return spec


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the dense model a spec from :func:`model_spec` describes (fresh weights).

    Raises:
        NasPruneError: The spec is malformed or names a model that cannot be built.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise NasPruneError(f"model spec must be a dict with a 'model' name, got {spec!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise NasPruneError(f"model spec 'kwargs' must be a dict, got {type(kwargs).__name__}")
    return create_model(spec["model"], **kwargs)


# ---------------------------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------------------------


def load_search_space(name: str) -> dict[str, Any] | None:
    """Read ``nas_prune/search_spaces/<name>.yaml`` for a zoo model.

    Returns:
        The parsed YAML (keys ``model, round_to, min_fraction, frozen`` and optionally ``grid``), or ``None`` for a
        ``pkg.module:factory`` or a name without a file.
    """
    if ":" in name or "/" in name or "\\" in name:
        return None
    path = SEARCH_SPACE_DIR / f"{name}.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))
