"""Where recipes come from: the bundled ones (`recipes/`), those that method plugins ship (the
entry-point group "sslcli.recipes", each naming a package whose folder holds YAML files), and
what each recipe's header comment says about itself."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError, did_you_mean
from .recipe import read_yaml


def _recipes_dir() -> Path:
    """recipes/ of a source checkout, else the copy installed inside the package."""
    source = Path(__file__).resolve().parent.parent / "recipes"
    if source.is_dir():
        return source
    from importlib.resources import files

    return Path(str(files("sslcli.recipes")))


RECIPES_DIR = _recipes_dir()


def recipe_dirs() -> list[Path]:
    """The bundled recipes' folder, then each plugin's, found without importing the plugin."""
    import importlib.util
    from importlib.metadata import entry_points

    found = [RECIPES_DIR]
    for ep in entry_points(group="sslcli.recipes"):
        try:
            spec = importlib.util.find_spec(ep.value)
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            print(f"warning: recipe plugin '{ep.name}' names '{ep.value}', which is not an installed package; "
                  f"its recipes are left out", file=sys.stderr)
        found += [Path(f) for f in folders]
    return found


def _recipe_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            files.setdefault(path.stem, path)  # a bundled recipe wins over a plugin's of the same name
    return files


def find_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the bundled recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file '{path}' does not exist; give a YAML file or a bundled name (see `sslcli recipes`)")
        return path
    bundled = _recipe_files().get(name_or_path)
    if bundled is None:
        names = bundled_recipes()
        raise UserError(
            f"no recipe named '{name_or_path}'{did_you_mean(name_or_path, names)}; "
            f"bundled: {', '.join(names)}, or give a path to a .yaml file"
        )
    return bundled


def bundled_recipes() -> list[str]:
    """The names of the bundled recipes and the plugins' recipes."""
    return sorted(_recipe_files())


def recipe_cards() -> list[dict]:
    """Each recipe: name, method, file, and what its header comment says: the first line (what it
    is), `# data:` (the data it expects) and `# expect:` (the figure its source reports)."""
    cards = []
    for name, path in sorted(_recipe_files().items()):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        said = {key: next((h.split(":", 1)[1].strip() for h in header if h.lower().startswith(f"{key}:")), None)
                for key in ("data", "expect")}
        raw = read_yaml(path)
        method, data = raw.get("method") or {}, raw.get("data") or {}
        if said["data"] is None and isinstance(data, dict):  # embedded data says itself
            said["data"] = data.get("source", "synthetic:shapes")
        cards.append({"name": name, "method": method.get("name", "") if isinstance(method, dict) else "",
                      "path": str(path), "description": header[0] if header else "", **said})
    return cards
