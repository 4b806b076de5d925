import pytest
import torch
from conftest import TINY
from test_engine import epoch_records

from sslcli.errors import UserError
from sslcli.methods.base import MethodContext
from sslcli.recipe import resolve_recipe
from sslcli.registry import get_method


def _recipe(**method):
    return resolve_recipe({"method": {"name": "multitask", **method}}, lambda name: get_method(name).Config)


@pytest.mark.parametrize("tasks, words", [
    ([{"name": "rotaton"}], "did you mean 'rotation'"),
    ([{"name": "jigsaw", "num_permutatons": 10}], "method.tasks[0].num_permutatons"),
    ([{"name": "rotation", "weight": 0}], "weight must be a positive number"),
    ([{"name": "rotation"}, {"name": "rotation"}], "listed twice"),
    ([{"name": "multitask"}], "cannot contain itself"),
    ([{"name": "supervised"}], "not an image pretext task"),
    ([], "method.tasks is empty"),
])
def test_task_lists_are_checked_when_the_recipe_is_read(tasks, words):
    with pytest.raises(UserError) as err:
        _recipe(tasks=tasks)
    assert words in str(err.value)


def _method(recipe):
    from sslcli.backbones import create_backbone

    backbone, info = create_backbone("resnet18", False, 32)
    return get_method("multitask")(MethodContext(recipe, backbone, info.feature_dim, 32))


def test_alternation_follows_the_weights_and_backbone_is_stored_once():
    method = _method(_recipe(tasks=[{"name": "rotation", "weight": 2}, {"name": "jigsaw", "weight": 1}]))
    order = []
    for _ in range(9):
        index = method.next_task()
        method.steps_per_task[index] += 1
        order.append(index)
    assert order.count(0) == 6 and order.count(1) == 3
    assert order[:3] in ([0, 1, 0], [0, 0, 1])  # interleaved, not all of one task first
    keys = method.state_dict().keys()
    assert sum(k.endswith("conv1.weight") and "layer" not in k for k in keys) == 1
    assert method.tasks["jigsaw"].backbone is method.backbone is method.tasks["rotation"].backbone
    n_params = sum(p.numel() for p in method.parameters())
    assert n_params == sum(p.numel() for p in method.backbone.parameters()) + sum(
        p.numel() for t in method.tasks.values() for n, p in t.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["alternate", "mix"])
def test_multitask_pretrain_logs_each_task(cli, tmp_path, mode):
    r = cli("pretrain", "--method", "multitask", *TINY, "--epochs", "2", "--set", f"method.mode={mode}", "--set", "train.precision=fp32",
            "--out", tmp_path / "run")
    assert r.code == 0, r.err
    last = epoch_records(tmp_path / "run")[-1]
    for key in ("rotation/loss", "rotation/rotation_acc", "jigsaw/loss", "jigsaw/jigsaw_acc"):
        assert key in last, key
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model"]["steps_per_task"].sum() == (6 if mode == "alternate" else 0)


@pytest.mark.slow
def test_a_pirl_task_trains_with_its_memory_bank(cli, tmp_path):
    tasks = '[{name: rotation}, {name: pirl, negatives: 16}]'
    r = cli("pretrain", "--method", "multitask", *TINY, "--epochs", "1", "--set", f"method.tasks={tasks}",
            "--set", "method.mode=mix", "--set", "train.precision=fp32", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    last = epoch_records(tmp_path / "run")[-1]
    assert "pirl/loss" in last and "rotation/loss" in last
    bank = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]["tasks.pirl.bank"]
    assert bank.shape[0] == 96  # one entry per training image, as pirl alone keeps
