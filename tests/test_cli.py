import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = ("import sys\nfrom sslcli.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'sslcli --help imported torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout and "knn" in done.stdout


@pytest.mark.slow
def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "sslcli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("sslcli ")


def test_pretrain_then_knn_end_to_end(cli, tmp_path):
    run = tmp_path / "run"
    r = cli("pretrain", "--method", "simclr", "--epochs", "1", *TINY, "--out", run, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)  # exactly one JSON object on stdout
    assert result["out"] == str(run) and result["epochs"] == 1
    for name in ("recipe.yaml", "metrics.jsonl", "checkpoints/last.pt", "backbone.safetensors", "backbone.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "backbone.json").read_text())
    assert info["timm_name"] == "resnet18" and info["input_size"] == 32 and info["method"] == "simclr"

    # the written recipe reproduces the run
    again = cli("pretrain", "--recipe", run / "recipe.yaml", "--out", tmp_path / "again", "--json")
    assert again.code == 0, again.err
    from test_engine import same_weights

    assert same_weights(run, tmp_path / "again")

    k = cli("knn", run, "--data", "synthetic:shapes", "--k", "5", "--json")
    assert k.code == 0, k.err
    out = json.loads(k.out)
    assert {"top1", "top5", "k", "temperature", "n_train", "n_val", "model"} <= out.keys()
    assert 0 <= out["top1"] <= out["top5"] <= 1 and out["k"] == 5 and out["n_val"] == 500


def test_knn_random_floor_and_listings(cli):
    r = cli("knn", "random:resnet18", "--data", "synthetic:shapes", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["model"] == "random:resnet18"
    methods = cli("methods", "--json")
    assert {m["name"] for m in json.loads(methods.out)["methods"]} >= {"simclr", "rotation"}
    recipes = cli("recipes", "--json")
    assert "simclr-tiny-imagenet" in {x["name"] for x in json.loads(recipes.out)["recipes"]}


def _flat_folder(path):
    from PIL import Image

    path.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(path / f"{i}.png")
    return path


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--method", "simclrr"], "did you mean 'simclr'"),
    (["pretrain", "--method", "simclr", "--set", "train.epochs"], "has no '='"),
    (["pretrain", "--method", "simclr", "--set", "optim.lrr=1"], "did you mean 'lr'"),
    (["pretrain", "--method", "simclr", "--batch-size", "0"], "at least 1"),
    (["pretrain", "--method", "simclr", "--batch-size", "5000"], "larger than the 2000 training images"),
    (["pretrain", "--recipe", "nope.yaml"], "does not exist"),
    (["pretrain", "--method", "simclr", "--backbone", "resnt18"], "did you mean 'resnet18'"),
    (["pretrain", "--method", "simclr", "--resume"], "no checkpoint"),
    (["knn", "random:resnt18"], "did you mean 'resnet18'"),
    (["knn", "no/such/run"], "does not exist"),
    (["knn", "random:resnet18", "--data", "FLAT"], "needs labelled"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, message):
    out = tmp_path / "out"
    args = [str(_flat_folder(tmp_path / "flat")) if a == "FLAT" else a for a in args]
    if args[0] == "pretrain":
        args += ["--out", str(out)]
    r = cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert message in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_non_empty_out_needs_resume_or_force(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("pretrain", "--method", "simclr", "--out", out)
    assert r.code == 2 and "--resume" in r.err and "--force" in r.err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(cli, tmp_path):
    r = cli("pretrain", "--method", "simclr", "--device", "cuda", "--out", tmp_path / "run", *TINY)
    assert r.code == 2 and "no usable CUDA" in r.err
