"""One registry per kind of thing: recipes, methods, reward models, task rewards, converters.

genrl's core never imports the packages layered on it (``rewards``, ``distill``);
they register what they provide here, and the first lookup of a kind imports
them (its plugins). A name that is not registered is a one-line usage error
listing the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

PLUGINS = ("rewards.registry", "rewards.tasks", "rewards.videoalign", "rewards.training", "distill.recipe")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None):
        """``register(name, obj)``, or ``@register(name)`` as a decorator."""
        if obj is not None:
            self._items[name] = obj
            return obj

        def deco(fn):
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Any:
        load_plugins()
        if name not in self._items:
            raise UsageError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._items


_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for plugin in PLUGINS:
        try:
            importlib.import_module(plugin)
        except ImportError as e:  # a layer that is not installed registers nothing
            if e.name and not plugin.startswith(e.name):
                raise


@dataclass
class Recipe:
    """What a training command runs: its config schema, how it builds the method, and the whole run."""

    name: str
    config: type
    build: Callable[..., Any]
    """build(cfg, quiet) -> Method."""
    run: Callable[..., dict]
    """run(cfg, quiet) -> summary dict (parse -> build -> train -> evaluate -> close)."""


RECIPES = Registry("recipe")
METHODS = Registry("method")
REWARDS = Registry("reward model")
TASK_REWARDS = Registry("task reward")
CONVERTERS = Registry("converter")
