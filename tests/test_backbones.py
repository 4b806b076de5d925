import pytest
import timm
import torch

from sslcli.backbones import create_backbone, load_model, save_backbone
from sslcli.errors import UserError


def test_small_input_stem():
    model, info = create_backbone("resnet18", "auto", 32)
    assert info.small_input and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    big, info64 = create_backbone("resnet18", "auto", 64)
    assert not info64.small_input and big.conv1.stride == (2, 2)


def test_weights_load_into_plain_timm_without_renaming(tmp_path):
    model, info = create_backbone("resnet18", False, 64)
    save_backbone(model, info, tmp_path)
    plain = timm.create_model("resnet18", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "backbone.safetensors")))
    x = torch.randn(2, 3, 64, 64)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain.forward_head(plain.forward_features(x), pre_logits=True), model(x), atol=1e-5)
    again, again_info = load_model(str(tmp_path))
    import dataclasses
    import hashlib

    assert dataclasses.replace(again_info, sha256=None) == info  # the json adds the weights' digest
    assert again_info.sha256 == hashlib.sha256((tmp_path / "backbone.safetensors").read_bytes()).hexdigest()
    assert torch.equal(again.layer4[1].conv2.weight, model.layer4[1].conv2.weight)


def test_unknown_names():
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        create_backbone("resnt18")
    with pytest.raises(UserError, match="random:resnet18"):
        load_model("random:")
    with pytest.raises(UserError, match="does not exist"):
        load_model("no/such/run")


def test_random_models_are_reproducible():
    a, _ = load_model("random:resnet18", 32)
    b, _ = load_model("random:resnet18", 32)
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_zero_init_last_chooses_the_residual_branch_start():
    """timm zeroes each residual block's last BatchNorm weight; torchvision's start keeps it at 1."""
    timm_start, _ = create_backbone("resnet18", False, 64)
    tv_start, _ = create_backbone("resnet18", False, 64, zero_init_last=False)
    for block in (timm_start.layer1[0], timm_start.layer4[1]):
        assert torch.count_nonzero(block.bn2.weight) == 0
    for block in (tv_start.layer1[0], tv_start.layer4[1]):
        assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))


def test_model_is_parsed_once_into_a_reference(tmp_path):
    from sslcli.backbones import parse_model
    from sslcli.errors import UserError

    floor = parse_model("random:resnet18")
    assert floor.is_random and floor.random_name == "resnet18" and floor.run_folder is None
    assert parse_model(floor) is floor  # a parsed reference passes through untouched
    (tmp_path / "run").mkdir()
    weights = tmp_path / "run" / "backbone.safetensors"
    assert parse_model(str(tmp_path / "run")).run_folder == tmp_path / "run"
    assert parse_model(str(weights)).run_folder == tmp_path / "run" and str(parse_model(str(weights))) == str(weights)
    with pytest.raises(UserError, match="'random:' needs a timm model name"):
        parse_model("random:")
