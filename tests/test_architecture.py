"""The code's shape, as DESIGN.md states it: imports flow one way down the floors, and no file
grows past its size limit."""

import ast
from pathlib import Path

import sslcli

ROOT = Path(sslcli.__file__).parent

# cli -> api -> (finetune, launch) -> export -> (engine | evaluation) -> methods -> backbones -> runfolder ->
# (data | losses | recipe | registry) -> small helpers -> errors. A unit imports only from floors below its own.
FLOOR = {
    "__main__": 8, "cli": 7, "api": 6.5, "finetune": 6, "launch": 6,
    "export": 5.5, "engine": 5, "evaluation": 5,
    "plugin": 4.5, "methods": 4, "backbones": 3, "runfolder": 2,
    "catalog": 1.5, "data": 1, "losses": 1, "recipe": 1, "registry": 1,
    "errors": -1, "schema": 0, "files": 0, "output": 0, "device": 0, "distributed": 0, "plots": 0, "__version__": 0,
    "__init__": 0,
}
# the registry finds the built-in plugins by scanning the methods package; it names none of them
# `import sslcli` names the API's functions, importing the API only when one is first used
ALLOWED = {("registry", "methods"), ("__init__", "api")}
LIMITS = {"methods": 250}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imported_units(path: Path) -> set[str]:
    package = list(path.relative_to(ROOT).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[:len(package) - (node.level - 1)]
        if node.module:
            found.add((base + node.module.split("."))[0])
        else:
            found.update((base + [alias.name])[0] for alias in node.names)
    return found


def test_imports_flow_down_the_floors():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        assert unit in FLOOR, f"{path}: give the new unit '{unit}' a floor in this test"
        for target in _imported_units(path) - {unit}:
            if FLOOR[target] >= FLOOR[unit] and (unit, target) not in ALLOWED:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_the_engine_and_the_evaluation_commands_sit_side_by_side():
    for unit, other in (("evaluation", "engine"), ("engine", "evaluation")):
        for path in (ROOT / unit).rglob("*.py"):
            assert other not in _imported_units(path), f"{path} imports {other}"


def test_no_file_passes_its_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LIMITS.get(_unit(p), 400)}
    assert not long, long
