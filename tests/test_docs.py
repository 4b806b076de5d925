"""docs/: the worked shell script that chains the commands through --json runs as written, and
every page the index links to exists."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_the_chained_example_script_runs(tmp_path):
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run(["bash", str(DOCS / "examples" / "pretrain-and-judge.sh"), str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for step in ("pretrain:", "knn: top1", "probe:", "export onnx:", "export torchscript:", "neighbours:", "info:"):
        assert any(line.startswith(step) for line in lines), (step, lines)
    work = tmp_path / "work"
    assert (work / "backbone.pt").is_file() and (work / "neighbours.png").is_file()
    assert (work / "backbone.onnx").is_file()  # the dev extra installs onnx


def test_the_docs_index_links_to_pages_that_exist():
    index = (DOCS / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", index)
    assert len(links) >= 10
    missing = [link for link in links if not link.startswith("http") and not (DOCS / link).exists()]
    assert not missing, missing
