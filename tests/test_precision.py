"""bf16 on the CPU: the one convolution case oneDNN gets wrong is guarded, and nothing else changes."""

import copy

import pytest
import torch
import torch.nn as nn

from sslcli.device import cpu_supports_bf16, guard_small_maps

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 instructions")


def _net() -> nn.Module:
    """Two strided 3x3 convolutions: the second sees a 1x1 map when the input is 2x2. (No ReLU between
    them: where bf16 rounding flips the sign of a value near zero, a ReLU passes another gradient.)"""
    return nn.Sequential(nn.Conv2d(8, 32, 3, 2, 1, bias=False), nn.Conv2d(32, 64, 3, 2, 1, bias=False))


def _grads(net: nn.Module, x: torch.Tensor, g: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = net(x)
    (y.float() * g).sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def _worst_error(guard: bool, trials: int = 12) -> float:
    """The largest relative error of a bf16 weight gradient against fp32 over `trials` draws
    (inf when one is not finite)."""
    worst = 0.0
    for seed in range(trials):
        torch.manual_seed(seed)
        net = _net()
        if guard:
            guard_small_maps(net)
        x, g = torch.randn(8, 8, 2, 2), torch.randn(8, 64, 1, 1)
        for ref, got in zip(_grads(net, x, g, False), _grads(net, x, g, True)):
            if not torch.isfinite(got).all():
                return float("inf")
            worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    return worst


@needs_bf16
def test_guarded_bf16_gradients_are_finite_and_close_to_fp32():
    assert _worst_error(guard=True) < 0.02  # bf16 rounding, no more


@needs_bf16
def test_unguarded_bf16_gradients_are_garbage_in_a_fresh_process():
    """What the guard is for. In a fresh process the unguarded gradient is non-finite; after other
    tests in the same process it can come out merely wrong, or right, so it is measured apart."""
    import subprocess
    import sys
    from pathlib import Path

    code = "from test_precision import _worst_error; print(_worst_error(guard=False, trials=24))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    unguarded = float(done.stdout.split()[-1])
    if unguarded < 0.02:
        pytest.skip(f"this torch computes the unguarded case right (error {unguarded:.3g}): the guard may go")
    assert unguarded > 1.0  # garbage, not rounding


def test_the_guard_touches_strided_wide_convolutions_only_and_keeps_the_weights():
    import timm

    model = timm.create_model("resnet18", num_classes=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert guard_small_maps(model) == 4  # the 7x7 stem and the first 3x3 of layer2, layer3, layer4
    assert guard_small_maps(model) == 0  # once is enough
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and before.keys() == model.state_dict().keys()
    assert isinstance(model.conv1, nn.Conv2d) and type(model.layer1[0].conv1) is nn.Conv2d  # stride 1: untouched
    copied = copy.deepcopy(model)
    assert type(copied.layer4[0].conv1) is type(model.layer4[0].conv1)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():  # fp32 outside autocast: the guard changes nothing
        assert torch.equal(model(x), _unguarded(before)(x))


def _unguarded(state: dict) -> nn.Module:
    import timm

    model = timm.create_model("resnet18", num_classes=0)
    model.load_state_dict(state)
    return model.eval()
