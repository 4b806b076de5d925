"""The method registry: built-in plugins register with `@register_method`, third-party ones
through the entry-point group "sslcli.methods" (each entry point names a module or a class)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from .errors import UserError, did_you_mean

if TYPE_CHECKING:
    from .methods.base import Method

_METHODS: dict[str, type["Method"]] = {}
_loaded = False


def register_method(name: str):
    """Class decorator: make a Method subclass available as `--method NAME`."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import pkgutil

    from . import methods

    for module in pkgutil.iter_modules(methods.__path__):  # one file per method: adding it is enough
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"sslcli.methods.{module.name}")
    for ep in entry_points(group="sslcli.methods"):
        ep.load()


def get_method(name: str) -> type["Method"]:
    _load_all()
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, _METHODS)}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def all_methods() -> dict[str, type["Method"]]:
    _load_all()
    return dict(sorted(_METHODS.items()))
