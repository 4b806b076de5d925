"""The joint-embedding losses against naive loops, hand-computed closed forms and bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslcli import distributed
from sslcli.losses import (
    barlow_twins_loss,
    byol_loss,
    collapse_floor,
    cross_correlation,
    embedding_std,
    info_nce,
    info_nce_logits,
    nt_xent,
    code_entropy,
    sinkhorn_knopp,
    swav_loss,
    vicreg_loss,
)

# Columns of a 4x4 Hadamard matrix but the constant one: mean 0, biased variance 1, mutually orthogonal.
HADAMARD = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
BN_EPS = 1e-5


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def test_package_reexports_every_loss():
    from sslcli import losses

    for name in losses.__all__:
        assert callable(getattr(losses, name)), name
    assert {"nt_xent", "info_nce", "sinkhorn_knopp", "swav_loss", "byol_loss", "barlow_twins_loss", "vicreg_loss"} <= set(
        losses.__all__
    )
    assert nt_xent.__module__ == "sslcli.losses.nt_xent"


# --- info_nce -----------------------------------------------------------------------------------------------


def naive_info_nce(q, p, negs, t):
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(cos(q[i], p[i]) / t)
        denom = pos + sum(math.exp(cos(q[i], n) / t) for n in negs)
        total += -math.log(pos / denom)
    return total / len(q)


def test_info_nce_logits_put_the_positive_in_column_0():
    q = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    negatives = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 1.0, 1.0]])
    logits = info_nce_logits(q, q.clone(), negatives)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits[:, 0], torch.ones(2))
    torch.testing.assert_close(logits[:, 1:], torch.zeros(2, 3))


def test_info_nce_logits_are_cosines():
    g = gen(1)
    q, p, negs = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    logits = info_nce_logits(q * 3, p, negs * 0.1)
    for i in range(5):
        assert logits[i, 0].item() == pytest.approx(cos(q[i], p[i]), abs=1e-6)
        for k in range(7):
            assert logits[i, 1 + k].item() == pytest.approx(cos(q[i], negs[k]), abs=1e-6)


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_naive_loop(t):
    g = gen(2)
    q, p, negs = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    assert info_nce(q, p, negs, t).item() == pytest.approx(naive_info_nce(q, p, negs, t), rel=1e-5)


def test_info_nce_closed_form_one_orthogonal_negative():
    # positive at cosine 1, the one negative at cosine 0: -log(e^{1/T} / (e^{1/T} + e^0)) = log(1 + e^{-1/T})
    q = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0]])
    for t in (0.1, 0.5, 1.0, 2.0):
        # float32 logits: absolute error ~1e-6, which matters only for the tiny loss at t=0.1
        assert info_nce(q, q.clone(), negatives, t).item() == pytest.approx(math.log(1 + math.exp(-1 / t)), rel=1e-6, abs=1e-6)


def test_info_nce_default_temperature_is_moco_v2():
    q, negatives = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert info_nce(q, q.clone(), negatives).item() == pytest.approx(math.log(1 + math.exp(-5.0)), rel=1e-5)


def test_info_nce_gradients_flow_and_nothing_is_detached_inside():
    g = gen(3)
    q = torch.randn(4, 3, generator=g, requires_grad=True)
    p = torch.randn(4, 3, generator=g, requires_grad=True)
    negs = torch.randn(6, 3, generator=g, requires_grad=True)
    info_nce(q, p, negs).backward()
    for t in (q, p, negs):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_info_nce_detached_keys_stay_constants():
    g = gen(4)
    q = torch.randn(4, 3, generator=g, requires_grad=True)
    p_leaf = torch.randn(4, 3, generator=g, requires_grad=True)
    n_leaf = torch.randn(6, 3, generator=g, requires_grad=True)
    info_nce(q, p_leaf.detach(), n_leaf.detach()).backward()
    assert q.grad is not None
    assert p_leaf.grad is None and n_leaf.grad is None


def test_info_nce_is_float32_for_low_precision_inputs():
    g = gen(5)
    q, p, negs = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(5, 8, generator=g)
    low = info_nce(q.bfloat16(), p.bfloat16(), negs.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(info_nce(q.bfloat16().float(), p.bfloat16().float(), negs.bfloat16().float()).item())


@pytest.mark.parametrize(
    "q, p, n, t",
    [
        ((4, 3), (4, 3), (5, 4), 0.2),  # negatives' D differs
        ((4, 3), (4, 2), (5, 3), 0.2),  # positive's D differs
        ((4, 3), (3, 3), (5, 3), 0.2),  # positive's N differs
        ((4,), (4,), (5, 4), 0.2),  # not 2-D
        ((4, 3), (4, 3), (5,), 0.2),  # negatives not 2-D
        ((2, 4, 3), (2, 4, 3), (5, 3), 0.2),  # 3-D
        ((4, 3), (4, 3), (0, 3), 0.2),  # no negatives
        ((4, 3), (4, 3), (5, 3), 0.0),  # temperature
    ],
)
def test_info_nce_bad_inputs_raise_value_error(q, p, n, t):
    with pytest.raises(ValueError, match="info_nce"):
        info_nce(torch.randn(*q), torch.randn(*p), torch.randn(*n), t)


# --- sinkhorn_knopp -----------------------------------------------------------------------------------------


def cosine_scores(b, k, seed):
    """Prototype scores as SwAV has them: cosines of normalised embeddings and prototypes, some prototypes favoured."""
    g = gen(seed)
    z = F.normalize(torch.randn(b, 8, generator=g) + torch.tensor([2.0] + [0.0] * 7), dim=1)
    c = F.normalize(torch.randn(k, 8, generator=g), dim=1)
    return z @ c.T


@pytest.mark.parametrize("b, k", [(64, 16), (10, 30)])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_sinkhorn_converges_to_equal_partition(b, k, epsilon):
    q = sinkhorn_knopp(cosine_scores(b, k, seed=b + k), epsilon=epsilon, iterations=100)
    assert q.shape == (b, k)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b), atol=1e-3, rtol=0)
    assert ((q.sum(dim=0) - b / k).abs() / (b / k)).max().item() < 1e-3


def test_sinkhorn_three_iterations_rows_exact_columns_near_uniform():
    b, k, epsilon = 64, 16, 0.05
    scores = cosine_scores(b, k, seed=7)
    q = sinkhorn_knopp(scores)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)
    softmax = torch.softmax(scores / epsilon, dim=1)

    def imbalance(x):
        return ((x.sum(dim=0) - b / k).abs() / (b / k)).max().item()

    assert imbalance(softmax) > 1.0  # the plain softmax is far from uniform on these scores
    assert imbalance(q) < 0.3 * imbalance(softmax)  # 0.53 vs 3.2 here


def test_sinkhorn_matches_textbook_loop():
    scores = cosine_scores(12, 5, seed=3).double()
    b, k, eps = 12, 5, 0.05
    q = torch.exp(scores / eps)
    q = q / q.sum()
    for _ in range(3):
        for j in range(k):
            q[:, j] = q[:, j] / q[:, j].sum() / k
        for i in range(b):
            q[i] = q[i] / q[i].sum() / b
    torch.testing.assert_close(sinkhorn_knopp(scores.float(), eps, 3).double(), q * b, atol=1e-6, rtol=1e-5)


def test_sinkhorn_is_stable_for_large_scores_and_shift_invariant():
    scores = cosine_scores(16, 4, seed=9) * 50  # exp(1000) overflows without the max shift
    q = sinkhorn_knopp(scores)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, sinkhorn_knopp(scores + 123.0))


def test_sinkhorn_has_no_gradient_and_float32_output():
    scores = cosine_scores(8, 4, seed=1).requires_grad_(True)
    q = sinkhorn_knopp(scores.bfloat16())
    assert not q.requires_grad and q.grad_fn is None
    assert q.dtype == torch.float32
    assert scores.grad is None


@pytest.mark.parametrize("shape, kwargs", [((8,), {}), ((2, 8, 4), {}), ((8, 4), {"epsilon": 0.0}), ((8, 4), {"iterations": 0})])
def test_sinkhorn_bad_inputs_raise_value_error(shape, kwargs):
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        sinkhorn_knopp(torch.randn(*shape), **kwargs)


def test_code_entropy_closed_forms():
    assert float(code_entropy(torch.full((5, 8), 1 / 8))) == pytest.approx(1.0, abs=1e-6)  # uniform codes
    assert float(code_entropy(torch.eye(4))) == pytest.approx(0.0, abs=1e-6)  # one prototype each
    # rows (1/2, 1/2, 0, 0): entropy ln 2 of ln 4 = 1/2; averaged with a one-hot row: 1/4
    codes = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 1.0, 0]])
    assert float(code_entropy(codes)) == pytest.approx(0.25, abs=1e-6)
    # Sinkhorn of identical scores is uniform; of well-separated ones, far from it
    assert float(code_entropy(sinkhorn_knopp(torch.zeros(16, 8)))) == pytest.approx(1.0, abs=1e-6)
    assert float(code_entropy(sinkhorn_knopp(cosine_scores(64, 8, seed=2), epsilon=0.02))) < 0.9


@pytest.mark.parametrize("codes", [torch.ones(4), torch.ones(4, 1), torch.ones(2, 3, 4)])
def test_code_entropy_bad_inputs_raise_value_error(codes):
    with pytest.raises(ValueError, match="code_entropy"):
        code_entropy(codes)


def _sinkhorn_rank(rank, world, init_file, scores, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        part = scores.chunk(world)[rank]
        q = sinkhorn_knopp(part, iterations=3)
        gathered = [torch.zeros_like(q) for _ in range(world)]
        dist.all_gather(gathered, q)
        if rank == 0:
            torch.save(torch.cat(gathered), result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sinkhorn_across_two_ranks_equals_one_big_batch(tmp_path):
    import torch.multiprocessing as mp

    scores = cosine_scores(12, 5, seed=11)
    scores[:6] += 0.5  # rank 0's half has a larger max than rank 1's
    mp.spawn(_sinkhorn_rank, args=(2, str(tmp_path / "init"), scores, str(tmp_path / "q.pt")), nprocs=2)
    torch.testing.assert_close(torch.load(tmp_path / "q.pt"), sinkhorn_knopp(scores, iterations=3))


def test_distributed_helpers_are_no_ops_without_a_process_group():
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.all_reduce_max(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.world_size() == 1


# --- swav_loss ----------------------------------------------------------------------------------------------


def naive_swav(scores, codes, t):
    pairs = []
    for i, q in enumerate(codes):
        for j, s in enumerate(scores):
            if j == i:
                continue
            total = 0.0
            for b in range(s.shape[0]):
                logz = math.log(sum(math.exp(float(x) / t) for x in s[b]))
                total += -sum(float(q[b, k]) * (float(s[b, k]) / t - logz) for k in range(s.shape[1]))
            pairs.append(total / s.shape[0])
    return sum(pairs) / len(pairs)


@pytest.mark.parametrize("n_crops, t", [(2, 0.1), (4, 0.1), (5, 0.5)])
def test_swav_loss_matches_naive_loop(n_crops, t):
    g = gen(n_crops)
    scores = [torch.randn(6, 4, generator=g) for _ in range(n_crops)]
    codes = [torch.softmax(torch.randn(6, 4, generator=g), dim=1) for _ in range(2)]
    assert swav_loss(scores, codes, t).item() == pytest.approx(naive_swav(scores, codes, t), rel=1e-5)


def test_swav_loss_closed_form_one_hot_codes():
    # Every crop scores 1 on the image's prototype and 0 elsewhere; codes one-hot on that prototype:
    # each term is -log(e^{1/T} / (e^{1/T} + (K-1))) = log(1 + (K-1) e^{-1/T}).
    k = 5
    labels = torch.tensor([0, 3, 1, 4])
    onehot = F.one_hot(labels, k).float()
    scores = [onehot.clone() for _ in range(4)]
    codes = [onehot.clone(), onehot.clone()]
    for t in (0.1, 0.5, 1.0):
        expected = math.log(1 + (k - 1) * math.exp(-1 / t))
        assert swav_loss(scores, codes, t).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_swav_loss_uses_swapped_crops_only():
    # Crop 0's own scores must not predict crop 0's code: make them wrong, everything else right.
    k, t = 4, 0.1
    onehot = F.one_hot(torch.tensor([0, 1, 2]), k).float()
    wrong = F.one_hot(torch.tensor([3, 3, 3]), k).float()
    right_loss = swav_loss([onehot, onehot], [onehot], t).item()
    assert swav_loss([wrong, onehot], [onehot], t).item() == pytest.approx(right_loss, rel=1e-6)
    assert swav_loss([onehot, wrong], [onehot], t).item() > right_loss + 5


def test_swav_loss_gradients_reach_scores_not_codes():
    g = gen(8)
    scores = [torch.randn(4, 3, generator=g, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(4, 3, generator=g), dim=1).requires_grad_(True) for _ in range(2)]
    swav_loss(scores, codes).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)
    assert all(c.grad is None for c in codes)


@pytest.mark.parametrize(
    "n_scores, n_codes, score_shape, code_shape, t",
    [
        (1, 1, (4, 3), (4, 3), 0.1),  # one crop
        (3, 0, (4, 3), (4, 3), 0.1),  # no codes
        (2, 3, (4, 3), (4, 3), 0.1),  # more codes than crops
        (3, 2, (4, 3), (4, 2), 0.1),  # code K differs
        (3, 2, (4, 3), (5, 3), 0.1),  # code B differs
        (3, 2, (4,), (4,), 0.1),  # not 2-D
        (3, 2, (4, 3), (4, 3), 0.0),  # temperature
    ],
)
def test_swav_loss_bad_inputs_raise_value_error(n_scores, n_codes, score_shape, code_shape, t):
    scores = [torch.randn(*score_shape) for _ in range(n_scores)]
    codes = [torch.randn(*code_shape) for _ in range(n_codes)]
    with pytest.raises(ValueError, match="swav_loss"):
        swav_loss(scores, codes, t)


def test_swav_loss_rejects_a_small_crop_of_another_shape():
    scores = [torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 5)]
    with pytest.raises(ValueError, match=r"scores\[2\]"):
        swav_loss(scores, [torch.rand(4, 3)])


# --- byol_loss ----------------------------------------------------------------------------------------------


def test_byol_loss_closed_forms():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert byol_loss(a, a * 3).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(a, torch.tensor([[0.0, 5.0], [1.0, 0.0]])).item() == pytest.approx(2.0, abs=1e-6)
    assert byol_loss(a, -a).item() == pytest.approx(4.0, abs=1e-6)
    # mean over rows: one aligned, one opposite
    assert byol_loss(a, torch.tensor([[1.0, 0.0], [0.0, -1.0]])).item() == pytest.approx(2.0, abs=1e-6)


def test_byol_loss_matches_cosine_formula():
    g = gen(12)
    p, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    expected = sum(2 - 2 * cos(p[i], t[i]) for i in range(5)) / 5
    assert byol_loss(p, t).item() == pytest.approx(expected, rel=1e-5)


def test_byol_target_gets_no_gradient():
    g = gen(13)
    p = torch.randn(4, 3, generator=g, requires_grad=True)
    t = torch.randn(4, 3, generator=g, requires_grad=True)
    byol_loss(p, t).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("a, b", [((4, 3), (4, 2)), ((4, 3), (3, 3)), ((4,), (4,)), ((2, 4, 3), (2, 4, 3))])
def test_byol_bad_inputs_raise_value_error(a, b):
    with pytest.raises(ValueError, match="byol_loss"):
        byol_loss(torch.randn(*a), torch.randn(*b))


# --- barlow twins -------------------------------------------------------------------------------------------


def naive_cross_correlation(z1, z2):
    n, d = z1.shape

    def standardise(z, j):
        col = [float(z[b, j]) for b in range(n)]
        mean = sum(col) / n
        var = sum((x - mean) ** 2 for x in col) / n
        return [(x - mean) / math.sqrt(var + BN_EPS) for x in col]

    a = [standardise(z1, j) for j in range(d)]
    b = [standardise(z2, j) for j in range(d)]
    return [[sum(a[i][k] * b[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]


def naive_barlow(z1, z2, lam):
    c = naive_cross_correlation(z1, z2)
    d = len(c)
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off


def test_cross_correlation_matches_naive_loop():
    g = gen(20)
    z1, z2 = torch.randn(7, 4, generator=g) * 3 + 1, torch.randn(7, 4, generator=g)
    torch.testing.assert_close(cross_correlation(z1, z2), torch.tensor(naive_cross_correlation(z1, z2)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 5e-3, 1.0])
def test_barlow_twins_matches_naive_loop(lam):
    g = gen(21)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(naive_barlow(z1, z2, lam), rel=1e-5)


def test_barlow_twins_closed_form_identical_decorrelated_views():
    # C = I / (1 + eps) exactly, so the loss is D * (1 - 1/(1+eps))^2, about 3e-10.
    z = HADAMARD * 2 + 7  # scale and shift are standardised away
    c = cross_correlation(z, z.clone())
    torch.testing.assert_close(c, torch.eye(3) / (1 + BN_EPS))
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(3 * (1 - 1 / (1 + BN_EPS)) ** 2, abs=1e-9)


def test_barlow_twins_closed_form_opposite_views():
    # z2 = -z1 with decorrelated columns: C = -I/(1+eps), loss = D (1 + 1/(1+eps))^2 ~ 4D.
    z = HADAMARD
    assert barlow_twins_loss(z, -z).item() == pytest.approx(3 * (1 + 1 / (1 + BN_EPS)) ** 2, rel=1e-6)
    assert barlow_twins_loss(z, -z).item() == pytest.approx(4 * 3, rel=1e-4)
    # Correlated columns: col2 = (h1 + h2)/sqrt(2) has mean 0, variance 1 and correlation 1/sqrt(2) with h1,
    # so C = -[[1, r], [r, 1]] / (1+eps), r = 1/sqrt(2): on-diagonal 2 (1 + 1/(1+eps))^2 and
    # off-diagonal 2 r^2 / (1+eps)^2 = 1 / (1+eps)^2.
    h1, h2 = HADAMARD[:, 0], HADAMARD[:, 1]
    z = torch.stack([h1, (h1 + h2) / math.sqrt(2)], dim=1)
    for lam in (0.0, 5e-3, 0.5):
        expected = 2 * (1 + 1 / (1 + BN_EPS)) ** 2 + lam / (1 + BN_EPS) ** 2
        assert barlow_twins_loss(z, -z, lam).item() == pytest.approx(expected, rel=1e-6)


def test_barlow_twins_lambda_scales_the_off_diagonal_only():
    g = gen(22)
    z1, z2 = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    on = barlow_twins_loss(z1, z2, 0.0).item()
    c = cross_correlation(z1, z2)
    off = (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()).item()
    assert off > 0.1
    for lam in (5e-3, 0.1, 2.0):
        assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(on + lam * off, rel=1e-5)


def test_barlow_twins_gradients_flow_to_both_views_and_low_precision_is_safe():
    g = gen(23)
    z1 = torch.randn(6, 3, generator=g, requires_grad=True)
    z2 = torch.randn(6, 3, generator=g, requires_grad=True)
    loss = barlow_twins_loss(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert z1.grad is not None and z2.grad is not None


@pytest.mark.parametrize("a, b", [((1, 3), (1, 3)), ((4, 3), (4, 2)), ((4, 3), (5, 3)), ((4,), (4,))])
def test_barlow_twins_bad_inputs_raise_value_error(a, b):
    with pytest.raises(ValueError, match="N >= 2|equal shape"):
        barlow_twins_loss(torch.randn(*a), torch.randn(*b))
    with pytest.raises(ValueError, match="cross_correlation"):
        cross_correlation(torch.randn(*a), torch.randn(*b))


# --- vicreg -------------------------------------------------------------------------------------------------


def naive_vicreg(z1, z2, eps=1e-4):
    n, d = z1.shape
    inv = sum((float(z1[b, j]) - float(z2[b, j])) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def branch(z):
        cols = [[float(z[b, j]) for b in range(n)] for j in range(d)]
        means = [sum(c) / n for c in cols]
        cov = [[sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
        var = sum(max(0.0, 1 - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        covariance = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var, covariance

    (v1, c1), (v2, c2) = branch(z1), branch(z2)
    return inv, (v1 + v2) / 2, c1 + c2


def test_vicreg_matches_naive_loop():
    g = gen(30)
    # scaled so some dimensions have std below 1 (variance hinge active) and some above
    z1 = torch.randn(9, 5, generator=g) * torch.tensor([0.3, 0.8, 1.5, 2.0, 0.1])
    z2 = z1 + 0.5 * torch.randn(9, 5, generator=g)
    total, parts = vicreg_loss(z1, z2)
    inv, var, cov = naive_vicreg(z1, z2)
    assert parts["invariance"].item() == pytest.approx(inv, rel=1e-5)
    assert parts["variance"].item() == pytest.approx(var, rel=1e-5)
    assert parts["covariance"].item() == pytest.approx(cov, rel=1e-5)
    assert var > 0 and cov > 0
    assert total.item() == pytest.approx(25 * inv + 25 * var + 1 * cov, rel=1e-5)
    total2, _ = vicreg_loss(z1, z2, invariance_weight=1.0, variance_weight=2.0, covariance_weight=3.0)
    assert total2.item() == pytest.approx(inv + 2 * var + 3 * cov, rel=1e-5)


def test_vicreg_identical_views_have_zero_invariance():
    g = gen(31)
    z = torch.randn(6, 4, generator=g)
    _, parts = vicreg_loss(z, z.clone())
    assert parts["invariance"].item() == 0.0


def test_vicreg_collapse_closed_form():
    # Constant embeddings: var 0, so each branch's variance term is 1 - sqrt(eps) = 0.99 (eps 1e-4),
    # averaged over the two branches 0.99; covariance 0; invariance 0 when both collapse to one point.
    eps = 1e-4
    z = torch.full((5, 3), 0.7)
    total, parts = vicreg_loss(z, z.clone(), eps=eps)
    assert parts["variance"].item() == pytest.approx(1 - math.sqrt(eps), rel=1e-6)
    assert parts["covariance"].item() == 0.0
    assert parts["invariance"].item() == 0.0
    assert total.item() == pytest.approx(25 * (1 - math.sqrt(eps)), rel=1e-6)
    _, parts = vicreg_loss(z, z.clone(), eps=0.25)
    assert parts["variance"].item() == pytest.approx(1 - 0.5, rel=1e-6)


def test_vicreg_decorrelated_columns_have_zero_covariance_and_variance():
    # Hadamard columns: unbiased variance 4/3 (std > 1, no hinge), pairwise covariance exactly 0.
    z = HADAMARD
    _, parts = vicreg_loss(z, z * 1.5)
    assert parts["covariance"].item() == pytest.approx(0.0, abs=1e-7)
    assert parts["variance"].item() == 0.0
    # and a correlated pair does have covariance: cov(h1, h1 + h2) = var(h1) = 4/3, squared, twice, over D=2
    h1, h2 = HADAMARD[:, 0], HADAMARD[:, 1]
    zc = torch.stack([h1, h1 + h2], dim=1)
    _, parts = vicreg_loss(zc, zc.clone())
    assert parts["covariance"].item() == pytest.approx(2 * (2 * (4 / 3) ** 2 / 2), rel=1e-6)


def test_vicreg_parts_are_detached_and_total_has_gradient():
    g = gen(32)
    z1 = torch.randn(6, 4, generator=g, requires_grad=True)
    z2 = torch.randn(6, 4, generator=g, requires_grad=True)
    total, parts = vicreg_loss(z1.bfloat16(), z2.bfloat16())
    assert set(parts) == {"invariance", "variance", "covariance"}
    assert all(not p.requires_grad for p in parts.values())
    assert total.dtype == torch.float32
    total.backward()
    assert z1.grad is not None and z2.grad is not None


@pytest.mark.parametrize("a, b", [((1, 3), (1, 3)), ((4, 3), (4, 2)), ((4, 3), (5, 3)), ((4,), (4,))])
def test_vicreg_bad_inputs_raise_value_error(a, b):
    with pytest.raises(ValueError, match="vicreg_loss"):
        vicreg_loss(torch.randn(*a), torch.randn(*b))


# --- collapse monitor ---------------------------------------------------------------------------------------


def test_embedding_std_is_zero_at_collapse():
    z = torch.tensor([[0.3, -1.0, 2.0]]).repeat(8, 1)
    assert embedding_std(z).item() == pytest.approx(0.0, abs=1e-7)
    # rows that differ only in scale are one point on the sphere: still collapsed
    assert embedding_std(z * torch.arange(1.0, 9.0)[:, None]).item() == pytest.approx(0.0, abs=1e-6)


def test_embedding_std_of_gaussian_is_near_the_floor():
    d = 256
    z = torch.randn(512, d, generator=gen(40))
    std = embedding_std(z).item()
    assert std == pytest.approx(collapse_floor(d), rel=0.1)
    assert collapse_floor(d) == 1 / 16


def test_embedding_std_matches_definition_and_is_detached():
    z = torch.randn(6, 4, generator=gen(41), requires_grad=True)
    n = F.normalize(z.detach(), dim=1)
    expected = sum(float(n[:, j].std()) for j in range(4)) / 4
    out = embedding_std(z)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    assert not out.requires_grad


@pytest.mark.parametrize("shape", [(1, 4), (4,), (2, 3, 4)])
def test_embedding_std_bad_inputs_raise_value_error(shape):
    with pytest.raises(ValueError, match="embedding_std"):
        embedding_std(torch.randn(*shape))


def test_collapse_floor_rejects_nonpositive_dimension():
    assert collapse_floor(4) == 0.5
    with pytest.raises(ValueError, match="collapse_floor"):
        collapse_floor(0)
