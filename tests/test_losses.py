import math

import pytest
import torch
import torch.nn.functional as F

from sslcli.losses import nt_xent


def naive_nt_xent(z1, z2, t):
    """A loop straight from the SimCLR paper's definition."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


def test_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert nt_xent(z1, z2, t).item() == pytest.approx(naive_nt_xent(z1, z2, t), rel=1e-5)


def test_closed_form_orthogonal_pairs():
    # Two images, each view identical to its partner, the images orthogonal:
    # per row: positive sim 1, negatives sim 0 (twice) -> loss = -log(e^{1/t} / (e^{1/t} + 2)).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(z1, z1.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_and_gradients_flow():
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3)
    loss = nt_xent(z1, z2, 0.2)
    assert loss.item() == pytest.approx(nt_xent(z1 * 7, z2 * 0.1, 0.2).item(), rel=1e-5)
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


@pytest.mark.parametrize("a, b, t", [((4, 3), (5, 3), 0.1), ((4,), (4,), 0.1), ((4, 3), (4, 3), 0.0)])
def test_bad_inputs_raise_value_error(a, b, t):
    with pytest.raises(ValueError):
        nt_xent(torch.randn(*a), torch.randn(*b), t)
