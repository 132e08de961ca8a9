"""User code named on the command line as ``module:function`` (``fedloom client --app``,
``fedloom server --model`` and ``--strategy``): loaded and called the same way everywhere."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from fedloom.errors import DeploymentError


def load_entry_point(entry_point: str, flag: str) -> Callable[..., object]:
    """The function named by ``module:function`` (the module is imported from sys.path, which
    holds the working directory)."""
    module_name, sep, attr = entry_point.partition(":")
    if not sep or not module_name or not attr:
        raise DeploymentError(f"{flag} expects module:function, got {entry_point!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DeploymentError(f"{flag} {entry_point}: cannot load it: {exc}") from None
    if not callable(fn):
        raise DeploymentError(f"{flag} {entry_point} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def call_factory(fn: Callable[..., object], cfg: Any, flag: str, entry_point: str) -> object:
    """``fn(cfg)`` if the factory takes an argument (the run's Config), else ``fn()``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if len(required) > 1:
        raise DeploymentError(
            f"{flag} {entry_point} takes {len(required)} arguments "
            f"({', '.join(p.name for p in required)}); it must take none or the run's Config"
        )
    return fn(cfg) if positional else fn()
