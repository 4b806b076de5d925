"""Shell completion of method names, recipe names and recipe keys, answered without importing
torch (the shell waits on every Tab)."""

from __future__ import annotations

import dataclasses


def complete_methods(incomplete: str) -> list[str]:
    from ..registry import method_names

    return [name for name in method_names() if name.startswith(incomplete)]


def complete_recipes(incomplete: str) -> list[str]:
    from ..catalog import bundled_recipes

    return [name for name in bundled_recipes() if name.startswith(incomplete)]


def complete_settings(incomplete: str) -> list[str]:
    """`section.key=` for every key of the recipe sections, and `method.name=`; once the `=` is
    typed, the choices of a key that has a few (`train.precision=bf16`)."""
    import typing

    from ..recipe import SECTIONS

    keys: dict[str, object] = {"method.name": None}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys[f"{section}.{f.name}"] = hints[f.name]
    if "=" in incomplete:
        key, _, value = incomplete.partition("=")
        choices = _choices(keys.get(key))
        return [f"{key}={c}" for c in choices if c.startswith(value)]
    return [f"{key}=" for key in keys if key.startswith(incomplete)]


def _choices(tp) -> list[str]:
    """The values a recipe key's type allows, where they are few: literals and true/false."""
    import typing

    if tp is bool:
        return ["true", "false"]
    if typing.get_origin(tp) is typing.Literal:
        return [str(a) for a in typing.get_args(tp)]
    if typing.get_origin(tp) is typing.Union:
        return [c for a in typing.get_args(tp) for c in _choices(a)]
    return []
