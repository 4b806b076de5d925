"""The Python API (`import sslcli`), the CLI's own foundation: the same runs, results and errors
as the commands; `sslcli info`; shell completion of methods, recipes and recipe keys."""

import json
import re
import subprocess
import sys

import pytest
import torch

import sslcli
from conftest import TINY

SMALL = dict(data__synthetic_train=96, data__synthetic_val=40, data__image_size=32, backbone__small_input=False)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return sslcli.pretrain("rotation", out=out, epochs=1, batch_size=32, **SMALL)


def test_pretrain_knn_probe_and_load_backbone_from_python(api_run):
    assert api_run["method"] == "rotation" and api_run["epochs"] == 1
    found = sslcli.knn(api_run["out"], k="5,10")
    assert [row["k"] for row in found["sweep"]] == [5, 10] and found["data_chosen_by"] == "run"
    probed = sslcli.probe(api_run["out"], epochs=2)
    assert 0 <= probed["layers"][0]["top1"] <= 1
    net = sslcli.load_backbone(api_run["out"])
    assert not net.training and net.pretrained_cfg["input_size"] == (3, 32, 32)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_the_api_and_the_cli_give_the_same_result(cli, api_run):
    r = cli("knn", api_run["out"], "--k", "7", "--json")
    assert r.code == 0
    from_cli, from_api = json.loads(r.out), sslcli.knn(api_run["out"], k=7)
    from_cli.pop("seconds"), from_api.pop("seconds")
    assert from_cli == from_api


def test_recipe_keys_as_keywords_dicts_and_set_strings(tmp_path):
    run = sslcli.pretrain({"method": {"name": "rotation"}, "train": {"epochs": 1}}, out=tmp_path / "a",
                          settings=["train.batch_size=32"], **{"optim.lr": 0.05}, **SMALL)
    recipe = (tmp_path / "a" / "recipe.yaml").read_text()
    assert run["steps"] == 3 and "lr: 0.05" in recipe and "batch_size: 32" in recipe


def test_bad_input_raises_the_clis_one_line_as_user_error(cli, tmp_path):
    with pytest.raises(sslcli.UserError) as raised:
        sslcli.pretrain("rotation", out=tmp_path / "b", optim__lrr=0.1)
    r = cli("pretrain", "--method", "rotation", "--set", "optim.lrr=0.1", "--out", tmp_path / "b")
    assert r.code == 2 and r.err.strip() == f"error: {raised.value}"
    assert "did you mean 'lr'" in str(raised.value) and not (tmp_path / "b").exists()


def test_import_sslcli_does_not_import_torch():
    code = "import sys, sslcli\nassert callable(sslcli.pretrain)\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_info_says_what_a_run_holds_and_whether_it_resumes(cli, api_run, tmp_path):
    r = cli("info", api_run["out"], "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert (info["method"], info["backbone"], info["epochs_done"], info["epochs_planned"]) == ("rotation", "resnet18", 1, 1)
    assert info["finished"] and not info["can_resume"] and "--epochs" in info["resume"]
    files = {f["path"]: f["bytes"] for f in info["files"]}
    assert {"recipe.yaml", "metrics.jsonl", "backbone.safetensors", "checkpoints/last.pt"} <= files.keys()
    assert all(size > 0 for size in files.values()) and info["writer"] is None
    assert info["last_epoch"]["epoch"] == 1 and info["wall_seconds"] > 0
    table = cli("info", api_run["out"])
    assert table.code == 0 and "1 of 1" in table.err


def test_info_on_a_run_that_can_go_on_and_on_a_damaged_checkpoint(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("pretrain", "--method", "rotation", *TINY, "--epochs", "1", "--out", run).code == 0
    recipe = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(re.sub(r"(?m)^  epochs: 1$", "  epochs: 3", recipe))  # as `--epochs 3 --resume`
    info = sslcli.info(run)
    assert info["can_resume"] and info["epochs_planned"] == 3 and info["checkpoint_epoch"] == 1
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    info = sslcli.info(run)
    assert not info["can_resume"] and "cannot be read" in info["resume"]


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "is not a folder"),
    (["{tmp}"], "holds no recipe.yaml"),
])
def test_info_refuses_what_is_not_a_run(cli, tmp_path, args, message):
    r = cli("info", *[a.format(tmp=tmp_path) for a in args])
    assert r.code == 2 and message in r.err


@pytest.mark.parametrize("words, expected", [
    ("sslcli pretrain --method sim", {"simclr"}),
    ("sslcli pretrain --recipe simclr-", {"simclr-cifar10", "simclr-imagenet", "simclr-tiny-imagenet"}),
    ("sslcli pretrain --set train.prec", {"train.precision="}),
    ("sslcli pretrain --set train.precision=b", {"train.precision=bf16"}),
    ("sslcli finetune runs/a --set optim.na", {"optim.name="}),
])
def test_shell_completion_of_methods_recipes_and_keys(words, expected):
    env = {"_SSLCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    code = ("import sys\nfrom sslcli.cli import main\ntry:\n    main([])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    import os

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert set(done.stdout.split()) == expected, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"  # a Tab never waits on torch
