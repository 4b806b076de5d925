"""The method registry: built-in plugins register with `@register_method`, third-party ones
through the entry-point group "sslcli.methods" (each entry point names a module or a class)."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from .errors import UserError, did_you_mean, first_line

if TYPE_CHECKING:
    from .methods.base import Method

_METHODS: dict[str, type["Method"]] = {}
_BROKEN: dict[str, str] = {}  # plugin name -> why it failed to import
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

    methods = importlib.import_module("sslcli.methods")

    for module in pkgutil.iter_modules(methods.__path__):  # one file per method: adding it is enough
        if not module.name.startswith("_") and module.name != "base":
            importlib.import_module(f"sslcli.methods.{module.name}")
    for ep in entry_points(group="sslcli.methods"):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not take the other methods down
            _BROKEN[ep.name] = f"{type(exc).__name__}: {first_line(exc)}"
            print(f"warning: method plugin '{ep.name}' ({ep.value}) failed to import ({_BROKEN[ep.name]}); "
                  f"the other methods still work", file=sys.stderr)


def get_method(name: str) -> type["Method"]:
    _load_all()
    if name in _BROKEN and name not in _METHODS:
        raise UserError(f"method plugin '{name}' failed to import ({_BROKEN[name]}); fix or reinstall the package "
                        f"that provides it")
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, _METHODS)}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def all_methods() -> dict[str, type["Method"]]:
    _load_all()
    return dict(sorted(_METHODS.items()))


def method_names() -> list[str]:
    """Every method name, read from the built-in method files and the plugins' entry-point names
    without importing them (shell completion asks on every Tab)."""
    import re
    from pathlib import Path

    here = Path(__file__).parent / "methods"
    names = set()
    for path in here.glob("*.py"):
        names.update(re.findall(r'@register_method\(\s*["\']([^"\']+)["\']', path.read_text()))
    names.update(ep.name for ep in entry_points(group="sslcli.methods"))
    return sorted(names)
