"""Method plugins for real: the README's example method, built into a package with its own
recipe, installed with pip into a folder of its own, is listed by `sslcli methods` and `sslcli
recipes` and trains with `--method`; a plugin that fails to import is named in one warning and
the rest still work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

README = Path(__file__).resolve().parent.parent / "README.md"

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1"

[project.entry-points."sslcli.methods"]
{entry}

[tool.setuptools.packages.find]
where = ["."]

[tool.setuptools.package-data]
"*" = ["*.yaml"]
"""

RECIPE = """# Upside-down prediction, quick: ResNet-18 on synthetic shapes
# data: synthetic:shapes (generated, nothing to download)
# expect: updown_acc near 1.0 within a few epochs
method: {name: upside-down}
data: {source: "synthetic:shapes"}
train: {epochs: 2, batch_size: 32}
"""


def readme_plugin() -> str:
    """The README's complete example method: the Python block after "A complete plugin"."""
    text = README.read_text()
    start = text.index("A complete plugin")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with two plugin packages installed into it by pip: the README's method (with a
    recipe), and one whose import fails."""
    root = tmp_path_factory.mktemp("plugins")
    good = root / "updown"
    (good / "sslcli_updown" / "recipes").mkdir(parents=True)
    (good / "sslcli_updown" / "__init__.py").write_text(readme_plugin())
    (good / "sslcli_updown" / "recipes" / "__init__.py").write_text("")
    (good / "sslcli_updown" / "recipes" / "upside-down-quick.yaml").write_text(RECIPE)
    entry = 'upside-down = "sslcli_updown"\n\n[project.entry-points."sslcli.recipes"]\nupside-down = "sslcli_updown.recipes"'
    (good / "pyproject.toml").write_text(PYPROJECT.format(name="sslcli-updown", entry=entry))
    bad = root / "broken"
    (bad / "sslcli_broken").mkdir(parents=True)
    (bad / "sslcli_broken" / "__init__.py").write_text("import a_module_that_is_not_installed\n")
    (bad / "pyproject.toml").write_text(PYPROJECT.format(name="sslcli-broken", entry='broken = "sslcli_broken"'))
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(good), str(bad)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def sslcli(site, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sslcli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_an_installed_plugin_is_listed_and_a_broken_one_named_once(site):
    done = sslcli(site, "methods", "--json")
    assert done.returncode == 0, done.stderr
    names = {m["name"]: m for m in json.loads(done.stdout)["methods"]}
    assert names["upside-down"]["description"] == "pretext: is the image upside down?"
    assert {"simclr", "rotation", "moco"} <= names.keys() and "broken" not in names
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'broken'" in warnings[0] and "a_module_that_is_not_installed" in warnings[0]
    recipes = {r["name"]: r for r in json.loads(sslcli(site, "recipes", "--json").stdout)["recipes"]}
    assert recipes["upside-down-quick"]["method"] == "upside-down"
    assert recipes["upside-down-quick"]["data"].startswith("synthetic:shapes")


@pytest.mark.slow
def test_an_installed_plugin_trains_and_is_judged(site, tmp_path):
    done = sslcli(site, "pretrain", "--recipe", "upside-down-quick", *TINY, "--epochs", "1", "--out", tmp_path / "run",
                  "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == "upside-down" and "updown_acc" in result["final"]
    assert (tmp_path / "run" / "backbone.safetensors").is_file()
    knn = sslcli(site, "knn", tmp_path / "run", "--json")
    assert knn.returncode == 0 and 0 <= json.loads(knn.stdout)["top1"] <= 1


@pytest.mark.slow
def test_a_broken_plugin_asked_for_by_name_says_why(site, tmp_path):
    done = sslcli(site, "pretrain", "--method", "broken", "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("error: method plugin 'broken' failed to import (ModuleNotFoundError")
    assert not (tmp_path / "run").exists()
