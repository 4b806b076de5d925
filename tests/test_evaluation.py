import json

import pytest
import torch
from PIL import Image

from sslcli.backbones import create_backbone
from sslcli.data.images import Split, balanced_fraction
from sslcli.errors import UserError
from sslcli.evaluation.features import MAX_LAYER_DIMS, extract_features, model_layers, pool_side, select_layers
from sslcli.evaluation.neighbours import BLUE, BORDER, GAP, GREEN, RED, Tile, draw_grid
from sslcli.evaluation.probe import train_linear_probe

from conftest import TINY, pretrain_run


def test_resnet_layers_are_named_as_timm_reports_them():
    model, _ = create_backbone("resnet18", False, 64)
    assert [layer.name for layer in model_layers(model)] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [layer.name for layer in select_layers(model, "layer4,stem")] == ["layer4", "stem"]
    assert select_layers(model, "last") == [None]
    with pytest.raises(UserError, match="did you mean 'layer3'"):
        select_layers(model, "layr3")


def test_per_layer_features_one_pass_shapes_and_caps():
    model, _ = create_backbone("resnet18", False, 64)
    split = Split(labels=torch.arange(6) % 2, images=torch.randint(0, 255, (6, 3, 64, 64), dtype=torch.uint8), size=64)
    feats, labels = extract_features(model, split, torch.device("cpu"), batch_size=4, normalize=False,
                                     layers=select_layers(model, "all") + [None])
    # 64 px: stem 32x32x64 -> 8x8 pooled; layer1 16x16x64 -> 8x8; layer2 8x8x128 -> 4x4; layer3 4x4x256 -> 4x4; layer4 2x2x512
    assert {k: v.shape[1] for k, v in feats.items()} == {
        "stem": 4096, "layer1": 4096, "layer2": 2048, "layer3": 4096, "layer4": 2048, "last": 512}
    assert all(v.shape[0] == 6 for v in feats.values()) and torch.equal(labels, split.labels)
    pooled, _ = extract_features(model, split, torch.device("cpu"), normalize=False)
    assert torch.allclose(pooled, feats["last"], atol=1e-2)  # the same forward, bf16 rounding aside
    assert all(v.shape[1] <= MAX_LAYER_DIMS for v in feats.values())


def test_pool_side():
    assert pool_side(64, 32) == 8 and pool_side(512, 2) == 2 and pool_side(2048, 7) == 1 and pool_side(3, 1) == 1


def test_probe_on_separable_features_is_near_perfect():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 4
    def sample(n):
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 20, generator=g), y
    (tx, ty), (vx, vy) = sample(300), sample(90)
    acc = train_linear_probe(tx, ty, vx, vy, 3)  # the defaults, as users get them
    assert acc["top1"] >= 0.98 and acc["top5"] == 1.0


def test_probe_at_chance_on_noise():
    g = torch.Generator().manual_seed(1)
    tx, vx = torch.randn(200, 10, generator=g), torch.randn(200, 10, generator=g)
    ty, vy = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    assert train_linear_probe(tx, ty, vx, vy, 4, epochs=20)["top1"] < 0.45


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_on_gpu_matches_cpu():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(4, 30, generator=g) * 2
    y, vy = torch.arange(400) % 4, torch.arange(120) % 4
    x, vx = centres[y] + torch.randn(400, 30, generator=g), centres[vy] + torch.randn(120, 30, generator=g)
    on_cpu = train_linear_probe(x, y, vx, vy, 4, epochs=10)
    on_gpu = train_linear_probe(x, y, vx, vy, 4, epochs=10, device="cuda")
    assert abs(on_cpu["top1"] - on_gpu["top1"]) <= 2 / 120  # the same data order; float rounding aside


def test_class_balanced_fraction():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    split = Split(labels=labels, images=torch.zeros(85, 3, 2, 2, dtype=torch.uint8), size=2)
    sub = balanced_fraction(split, 0.1, seed=0)
    assert torch.bincount(sub.labels).tolist() == [5, 3, 1]  # 10% of each class, at least one
    assert torch.equal(balanced_fraction(split, 0.1, seed=0).labels, sub.labels)
    images = torch.arange(85).view(85, 1, 1, 1).expand(85, 3, 2, 2).to(torch.uint8)
    other = balanced_fraction(Split(labels=labels, images=images, size=2), 0.1, 1)
    assert torch.bincount(other.labels).tolist() == [5, 3, 1]


def test_grid_size_and_layout():
    img = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    rows = [[Tile(img, "query\ncat", BLUE), Tile(img, "cat\n0.90", GREEN), Tile(img, "dog\n0.50", RED)]] * 2
    cell = 40
    grid = draw_grid(rows, cell=cell, header=["query", "#1", "#2"])
    tile_w = cell + 2 * BORDER
    assert grid.size[0] == 3 * tile_w + 5 * GAP
    px = grid.load()
    y = 22 + GAP + 1  # inside the first row's frame, below the header
    assert px[GAP + 1, y] == BLUE
    assert px[GAP + tile_w + 2 * GAP + 1, y] == GREEN
    assert px[GAP + 2 * (tile_w + GAP) + GAP + 1, y] == RED
    assert px[GAP + BORDER + cell // 2, y + BORDER + cell // 2] == (128, 128, 128)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return pretrain_run(tmp_path_factory.mktemp("eval") / "run", "--method", "rotation", "--epochs", "2", *TINY)


def test_pretrain_draws_curves(tiny_run):
    with Image.open(tiny_run / "curves.png") as im:
        assert im.size[0] > 600 and im.size[1] > 200


def test_probe_knn_sweep_and_layer_cli(cli, tiny_run, tmp_path):
    r = cli("probe", tiny_run, "--layers", "all", "--epochs", "5", "--plot", tmp_path / "p.png", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)["layers"]
    assert [row["layer"] for row in rows] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert all(0 <= row["top1"] <= 1 for row in rows) and (tmp_path / "p.png").is_file()
    r = cli("knn", tiny_run, "--k", "5,10", "--layer", "layer3", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert [row["k"] for row in out["sweep"]] == [5, 10] and out["layer"] == "layer3" and out["k"] == 5


def test_finetune_cli_writes_a_run(cli, tiny_run, tmp_path):
    r = cli("finetune", tiny_run, "--fraction", "0.5", "--epochs", "1", "--batch-size", "16",
            "--set", "data.synthetic_train=100", "--set", "data.synthetic_val=40", "--out", tmp_path / "ft", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["n_train"] == 50 and out["n_val"] == 40 and 0 <= out["top1"] <= out["top5"] <= 1  # 10 a class -> 5
    for name in ("eval.json", "curves.png", "backbone.safetensors", "metrics.jsonl"):
        assert (tmp_path / "ft" / name).is_file(), name
    r = cli("finetune", "random:resnet18", "--epochs", "1", "--set", "data.synthetic_train=64",
            "--set", "data.synthetic_val=20", "--set", "data.image_size=32", "--batch-size", "32", "--out", tmp_path / "r", "--json")
    assert r.code == 0, r.err


def test_visualize_neighbours_cli(cli, tiny_run, tmp_path):
    out = tmp_path / "grid.png"
    r = cli("visualize-neighbours", tiny_run, "--queries", "3", "--k", "4", "--out", out, "--json")
    assert r.code == 0, r.err
    with Image.open(out) as im:
        w, h = im.size
    assert json.loads(r.out)["size"] == [w, h]
    assert w > 5 * 96 and h > 3 * 96
    bad = cli("visualize-neighbours", tiny_run, "--out", tmp_path / "grid.jpg")
    assert bad.code == 2 and "must end in .png" in bad.err


def test_without_data_the_choice_is_said_on_stderr_and_in_the_json(cli, tiny_run, tmp_path):
    import shutil

    r = cli("knn", tiny_run, "--k", "10,5000,6000", "--json")
    assert r.code == 0, r.err
    out = r.json
    assert (out["data"], out["data_chosen_by"]) == ("synthetic:shapes", "run")
    assert f"judging on 'synthetic:shapes', the data '{tiny_run}' was trained on" in r.err
    # a k above the 2,000 training images is capped, said once, and reported as used
    assert [(row["k"], row.get("k_asked")) for row in out["sweep"]] == [(10, None), (2000, 5000), (2000, 6000)]
    assert r.err.count("warning: --k 5000,6000 is more than the 2000 training images; using k=2000") == 1

    r = cli("knn", tiny_run / "backbone.safetensors", "--json")  # a weights file in its run folder: the run's data
    assert r.code == 0 and r.json["data_chosen_by"] == "run", r.err

    away = tmp_path / "away"
    away.mkdir()
    for name in ("backbone.safetensors", "backbone.json"):
        shutil.copy(tiny_run / name, away / name)
    r = cli("probe", away / "backbone.safetensors", "--epochs", "1", "--json")
    assert r.code == 0 and r.json["data_chosen_by"] == "default", r.err
    assert "there is no recipe.yaml beside" in r.err and "judging on the default 'synthetic:shapes'" in r.err

    shutil.copy(tiny_run / "backbone.json", tmp_path / "backbone.json")
    (away / "recipe.yaml").write_text("data: [unclosed\n")
    r = cli("knn", away, "--json")
    assert r.code == 0 and r.json["data_chosen_by"] == "default", r.err
    assert f"'{away / 'recipe.yaml'}' cannot be read" in r.err

    r = cli("knn", tiny_run, "--data", "synthetic:shapes", "--json")  # asked for: nothing to say
    assert r.json["data_chosen_by"] == "--data" and "note:" not in r.err


class FakeCifar10:
    """Stands for torchvision's CIFAR10 (nothing downloads in tests): records the root it was given."""

    roots: list = []
    missing = False
    classes = ["a", "b"]

    def __init__(self, root, train=True, download=True):
        import numpy as np

        FakeCifar10.roots.append(root)
        if FakeCifar10.missing:
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        n = 40 if train else 20
        self.data = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 2 for i in range(n)]


def test_torchvision_sets_take_their_root_from_the_option_or_the_run(cli, tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCifar10)
    monkeypatch.setattr(FakeCifar10, "roots", [])
    r = cli("knn", "random:resnet18", "--data", "cifar10", "--data-root", tmp_path / "c10", "--k", "5", "--json")
    assert r.code == 0, r.err
    assert FakeCifar10.roots[-1] == str(tmp_path / "c10") and r.json["data_root"] == str(tmp_path / "c10")

    run = tmp_path / "run"
    r = cli("pretrain", "--method", "rotation", "--data", "cifar10", "--set", f"data.root={tmp_path / 'mine'}",
            "--set", "backbone.small_input=false", "--epochs", "1", "--batch-size", "20", "--out", run)
    assert r.code == 0, r.err
    r = cli("knn", run, "--k", "5", "--json")  # no --data, no --data-root: the run's set, in the run's root
    assert r.code == 0, r.err
    assert FakeCifar10.roots[-1] == str(tmp_path / "mine") and r.json["data"] == "cifar10"

    monkeypatch.setattr(FakeCifar10, "missing", True)
    for command in (["knn", "random:resnet18"], ["probe", "random:resnet18"],
                    ["visualize-neighbours", "random:resnet18", "--out", tmp_path / "n.png"]):
        r = cli(*command, "--data", "cifar10")
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        assert "pass --data-root FOLDER to name the folder" in r.err and "--set" not in r.err
    r = cli("pretrain", "--method", "rotation", "--data", "cifar10", "--out", tmp_path / "p")
    assert r.code == 2 and "pass --set data.root=FOLDER to name the folder" in r.err
