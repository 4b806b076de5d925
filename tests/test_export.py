"""`sslcli export`: TorchScript, torch.export and ONNX files that give the torch model's outputs
(read back as a user would, at a batch size other than the export's), timm folders that timm
loads, for a ResNet run and a ViT; and bad requests refused before anything is written."""

import json

import pytest
import torch

import sslcli
from conftest import TINY, pretrain_run

VIT = "random:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # the standard stem (small_input=false), so the run is a timm architecture as it stands
    return pretrain_run(tmp_path_factory.mktemp("export") / "simclr", "--method", "simclr", *TINY, "--epochs", "1")


def _load(fmt, path):
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("fmt, suffix, which", [
    ("torchscript", ".pt", "resnet-run"), ("pt2", ".pt2", "resnet-run"), ("onnx", ".onnx", "resnet-run"),
    ("torchscript", ".pt", "vit"), ("onnx", ".onnx", "vit"),
])
def test_exported_files_give_the_torch_models_outputs(cli, run, tmp_path, fmt, suffix, which):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model = str(run) if which == "resnet-run" else VIT
    out = tmp_path / f"model{suffix}"
    r = cli("export", model, "--format", fmt, "--out", out, "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    side = json.loads((tmp_path / f"model{suffix}.json").read_text())
    assert side["backbone"]["input_size"] == result["input"][-1] == (32 if which == "resnet-run" else 224)
    assert side["backbone"]["mean"] == [0.485, 0.456, 0.406] and side["format"] == fmt
    reference = sslcli.load_backbone(model)
    x = torch.randn(5, *result["input"], generator=torch.Generator().manual_seed(1))  # the export used batch 2
    with torch.no_grad():
        expected, got = reference(x), _load(fmt, out)(x)
    assert got.shape == expected.shape == (5, result["output_dim"])
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("which", ["resnet-run", "vit"])
def test_a_timm_folder_loads_in_timm_to_the_same_model(cli, run, tmp_path, which):
    import timm

    model = str(run) if which == "resnet-run" else VIT
    r = cli("export", model, "--format", "timm", "--out", tmp_path / "timm")
    assert r.code == 0, r.err
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    size = 32 if which == "resnet-run" else 224
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, size, size)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), sslcli.load_backbone(model)(x), atol=1e-6)


def test_with_head_gives_the_projected_embedding(cli, run, tmp_path):
    r = cli("export", run, "--format", "torchscript", "--with-head", "--out", tmp_path / "head.pt", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["with_head"] and result["output_dim"] == 128  # SimCLR's proj_dim
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    last = max((k for k in state if k.startswith("projector.") and k.endswith(".weight")), key=lambda k: k)
    assert state[last].shape[0] == 128
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.jit.load(str(tmp_path / "head.pt"))(x).shape == (2, 128)


@pytest.mark.parametrize("args, message", [
    (["--format", "onxx", "--out", "{tmp}/m.onnx"], "did you mean 'onnx'"),
    (["--format", "onnx", "--out", "{tmp}/m.pt"], "must end in .onnx"),
    (["--format", "timm", "--out", "{tmp}/m.pt"], "writes a folder"),
    (["--format", "torchscript", "--out", "{tmp}/missing/m.pt"], "does not exist"),
    (["--format", "torchscript", "--with-head", "--out", "{tmp}/m.pt"], "random: model has no trained head"),
    (["--format", "torchscript", "--tower", "ears", "--out", "{tmp}/m.pt"], "unknown --tower"),
])
def test_bad_requests_are_refused_in_one_line(cli, tmp_path, args, message):
    r = cli("export", "random:resnet18", *[a.format(tmp=tmp_path) for a in args])
    assert r.code == 2 and message in r.err, r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert not list(tmp_path.glob("m*"))


def test_an_existing_output_needs_force(cli, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    r = cli("export", "random:resnet18", "--format", "torchscript", "--out", out)
    assert r.code == 2 and "--force" in r.err and out.read_bytes() == b"keep me"
    assert cli("export", "random:resnet18", "--format", "torchscript", "--out", out, "--force").code == 0
    assert out.read_bytes() != b"keep me"


def test_a_small_input_stem_is_not_offered_as_a_timm_folder(cli, tmp_path):
    run = pretrain_run(tmp_path / "small", "--method", "rotation", *TINY, "--epochs", "1",
                       "--set", "backbone.small_input=true")
    r = cli("export", run, "--format", "timm", "--out", tmp_path / "timm")
    assert r.code == 2 and "small-input stem" in r.err and not (tmp_path / "timm").exists()
    r = cli("export", run, "--format", "torchscript", "--with-head", "--out", tmp_path / "m.pt")
    assert r.code == 2 and "no projection head" in r.err
