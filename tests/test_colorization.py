import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from sslcli.data.images import Batch
from sslcli.methods.base import MethodContext
from sslcli.losses import weighted_cross_entropy
from sslcli.methods._colour import (
    BIN_WIDTH,
    NUM_BINS,
    annealed_mean,
    decode_bins,
    encode_ab,
    lab_to_rgb,
    rebalance_weights,
    rgb_to_lab,
    smooth_prior,
    soft_encode_ab,
)
from sslcli.methods.colorization import Colorization


def make_method(image_size=32, **method_keys):
    from sslcli.backbones import create_backbone
    from sslcli.recipe import resolve_recipe
    from sslcli.registry import get_method

    raw = {"method": {"name": "colorization", **method_keys}, "data": {"image_size": image_size},
           "backbone": {"name": "resnet18", "small_input": False}}
    recipe = resolve_recipe(raw, lambda n: get_method(n).Config)
    torch.manual_seed(0)
    backbone, info = create_backbone("resnet18", False, image_size)
    return Colorization(MethodContext(recipe, backbone, info.feature_dim, image_size))


def colour_images(n, size, seed=0):
    """uint8 images, each half one random colour and half another."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (n, 2, 3), generator=gen, dtype=torch.uint8)
    images = colours[:, 0].view(n, 3, 1, 1).repeat(1, 1, size, size)
    images[..., size // 2:] = colours[:, 1].view(n, 3, 1, 1)
    return images


# ---------------------------------------------------------------- colour space

def test_lab_round_trip_on_random_rgb():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0])  # the dark linear segment of both curves
    x[0, :, 0, 1] = torch.tensor([0.01, 0.02, 0.03])
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-3


@pytest.mark.parametrize("rgb, lab", [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
])
def test_known_colours(rgb, lab):
    got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(got, torch.tensor(lab), atol=0.05), got


def test_colour_functions_refuse_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        rgb_to_lab(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Lab"):
        lab_to_rgb(torch.rand(1, 2, 4, 4))


# ---------------------------------------------------------------- bins

def test_every_bin_decodes_to_its_centre_and_back():
    index = torch.arange(NUM_BINS)
    assert NUM_BINS == 484
    assert torch.equal(encode_ab(decode_bins(index)), index)
    centres = decode_bins(index)
    assert centres.shape == (NUM_BINS, 2) and centres.min() == -105 and centres.max() == 105


def test_decode_of_encode_is_within_half_a_bin():
    ab = torch.rand(2, 2, 30, 30, generator=torch.Generator().manual_seed(1)) * 219.99 - 110
    back = decode_bins(encode_ab(ab))
    assert back.shape == ab.shape
    assert (back - ab).abs().max() <= BIN_WIDTH / 2 + 1e-4
    far = torch.tensor([[500.0, -500.0]])  # out of range: the nearest corner bin
    assert decode_bins(encode_ab(far)).tolist() == [[105.0, -105.0]]


def test_bins_refuse_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 2, \.\.\.\)"):
        encode_ab(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="integer"):
        decode_bins(torch.zeros(4))
    with pytest.raises(ValueError, match="484"):
        decode_bins(torch.tensor([484]))


def test_annealed_mean_is_the_centre_for_a_peaked_distribution_and_the_mean_at_t1():
    logits = torch.full((1, NUM_BINS, 2, 2), -1e4)
    target = encode_ab(torch.tensor([[30.0, -60.0]]))[0]
    logits[0, target] = 0
    assert torch.allclose(annealed_mean(logits, 0.38), torch.tensor([35.0, -55.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))
    uniform = annealed_mean(torch.zeros(1, NUM_BINS, 1, 1), 1.0)
    assert uniform.abs().max() < 1e-4  # the grid is symmetric about 0
    two = torch.full((1, NUM_BINS), -1e4)
    i, j = encode_ab(torch.tensor([[0.0, 0.0], [20.0, 0.0]])).tolist()
    two[0, i], two[0, j] = 0.0, math.log(3.0)  # p = 1/4, 3/4 at T=1
    assert torch.allclose(annealed_mean(two, 1.0), torch.tensor([[5 + 0.75 * 20, 5.0]]), atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        annealed_mean(torch.zeros(1, NUM_BINS), 0.0)
    with pytest.raises(ValueError, match="484"):
        annealed_mean(torch.zeros(1, 10), 0.38)


# ---------------------------------------------------------------- prior and weights

def test_rebalance_weights_closed_form():
    prior = torch.zeros(NUM_BINS, dtype=torch.float64)
    prior[[0, 7, 300]] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    lam, q = 0.5, 3
    raw = {i: 1 / ((1 - lam) * p + lam / q) for i, p in [(0, 0.5), (7, 0.3), (300, 0.2)]}
    norm = 0.5 * raw[0] + 0.3 * raw[7] + 0.2 * raw[300]
    w = rebalance_weights(prior, lam)
    for i, value in raw.items():
        assert w[i].item() == pytest.approx(value / norm)
    assert w[1].item() == pytest.approx((q / lam) / norm)  # unseen bins: the largest weight
    assert (prior * w).sum().item() == pytest.approx(1.0)
    assert w[300] > w[7] > w[0]  # rarer colours weigh more
    assert torch.allclose(rebalance_weights(prior, 1.0), torch.ones(NUM_BINS, dtype=torch.float64))
    with pytest.raises(ValueError, match="lam"):
        rebalance_weights(prior, 0.0)


def test_smoothing_spreads_a_peak_by_a_gaussian_of_sigma_5():
    prior = torch.zeros(NUM_BINS)
    prior[10 * 22 + 10] = 1.0
    smooth = smooth_prior(prior, 5.0).view(22, 22)
    assert smooth.sum().item() == pytest.approx(1.0)
    # neighbours 10 ab units away: exp(-10^2 / (2 * 5^2)) of the peak along each axis
    assert (smooth[10, 11] / smooth[10, 10]).item() == pytest.approx(math.exp(-2), rel=1e-4)
    assert (smooth[11, 11] / smooth[10, 10]).item() == pytest.approx(math.exp(-4), rel=1e-4)
    assert smooth[10, 10] == smooth.max()


def test_weighted_cross_entropy_with_uniform_weights_is_plain_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, NUM_BINS, 3, 3, generator=gen)
    target = torch.randint(0, NUM_BINS, (2, 3, 3), generator=gen)
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.ones(NUM_BINS)), F.cross_entropy(logits, target))
    weights = torch.rand(NUM_BINS, generator=gen)
    manual = (F.cross_entropy(logits, target, reduction="none") * weights[target]).mean()
    assert torch.allclose(weighted_cross_entropy(logits, target, weights), manual)
    with pytest.raises(ValueError, match="target shape"):
        weighted_cross_entropy(logits, target[:, :2], weights)


def test_soft_encoding_spreads_a_colour_over_its_nearest_bins_by_a_gaussian():
    # a value on a bin centre: itself at distance 0 and its 4 edge neighbours at 10 ab units,
    # each weighted exp(-10^2 / (2 * 5^2)) = exp(-2) of the centre
    centre = decode_bins(torch.tensor([10 * 22 + 13]))  # (1, 2)
    soft = soft_encode_ab(centre, neighbours=5, sigma=5.0)
    assert soft.shape == (1, NUM_BINS)
    peak = 1 / (1 + 4 * math.exp(-2))
    assert soft[0, 10 * 22 + 13].item() == pytest.approx(peak, rel=1e-5)
    for index in (9 * 22 + 13, 11 * 22 + 13, 10 * 22 + 12, 10 * 22 + 14):
        assert soft[0, index].item() == pytest.approx(peak * math.exp(-2), rel=1e-5)
    assert int((soft > 0).sum()) == 5
    gen = torch.Generator().manual_seed(1)
    ab = torch.rand(3, 2, 4, 4, generator=gen) * 200 - 100
    soft = soft_encode_ab(ab)
    assert soft.shape == (3, NUM_BINS, 4, 4)
    assert torch.allclose(soft.sum(1), torch.ones(3, 4, 4))
    assert torch.equal(soft.argmax(1), encode_ab(ab))  # the heaviest bin is the nearest one
    assert torch.equal(soft_encode_ab(ab, neighbours=1), F.one_hot(encode_ab(ab), NUM_BINS).movedim(-1, 1).float())
    with pytest.raises(ValueError, match="neighbours"):
        soft_encode_ab(ab, neighbours=0)


def test_weighted_cross_entropy_of_a_soft_target_weighs_each_pixel_by_its_heaviest_bin():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, NUM_BINS, 3, 3, generator=gen)
    ab = torch.rand(2, 2, 3, 3, generator=gen) * 200 - 100
    weights = torch.rand(NUM_BINS, generator=gen)
    hard = encode_ab(ab)
    one_hot = soft_encode_ab(ab, neighbours=1)
    assert torch.allclose(weighted_cross_entropy(logits, one_hot, weights), weighted_cross_entropy(logits, hard, weights))
    soft = soft_encode_ab(ab)
    manual = (-(soft * F.log_softmax(logits, 1)).sum(1) * weights[hard]).mean()
    assert torch.allclose(weighted_cross_entropy(logits, soft, weights), manual)
    with pytest.raises(ValueError, match="target shape"):
        weighted_cross_entropy(logits, soft[:, :, :2], weights)


def file_split(images, folder):
    """A split read from files one by one (as for data too large to cache), image 3 undecodable."""
    from PIL import Image

    from sslcli.data.damaged import BadImages
    from sslcli.data.images import Split

    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    paths[3].write_bytes(b"not an image")
    return Split(labels=torch.full((len(images),), -1), files=paths, size=images.shape[-1],
                 bad=BadImages("test", len(images), 1.0))


def test_setup_estimates_the_prior_from_training_images(tmp_path):
    from sslcli.data.images import Split

    images = colour_images(40, 32)
    method = make_method(prior_samples=20)
    method.setup(Split(labels=torch.full((40,), -1), images=images))
    prior, weights = method.prior.clone(), method.weights.clone()
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (prior * weights).sum().item() == pytest.approx(1.0, abs=1e-4)
    assert prior.max() > 10 / NUM_BINS  # far from uniform: a few dozen colours
    # the same seeded sample gives the same prior; read() is used when nothing is in memory
    again = make_method(prior_samples=20)
    again.setup(Split(labels=torch.full((40,), -1), images=images))
    assert torch.equal(again.prior, prior)
    from_files = make_method(prior_samples=20)
    from_files.setup(file_split(images, tmp_path / "files"))
    assert from_files.prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(from_files.prior, prior, atol=0.02)
    # both are buffers, so checkpoints carry them
    assert {"prior", "weights"} <= set(method.state_dict())
    off = make_method(prior_samples=20, rebalance=0.0)
    off.setup(Split(labels=torch.full((40,), -1), images=images))
    assert torch.equal(off.weights, torch.ones(NUM_BINS))


def test_views_and_step_shapes():
    method = make_method()
    gen = torch.Generator().manual_seed(0)
    inputs, target, ab = method.make_views(Batch.of(colour_images(4, 32)), gen)
    assert inputs.shape == (4, 3, 32, 32) and target.shape == (4, 8, 8) and ab.shape == (4, 2, 8, 8)
    assert target.dtype == torch.long
    # the input is grey: its three channels agree before normalisation
    from sslcli.data.augment import IMAGENET_MEAN, IMAGENET_STD
    raw = inputs * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert (raw[:, 0] - raw[:, 1]).abs().max() < 1e-4 and (raw[:, 1] - raw[:, 2]).abs().max() < 1e-4
    loss, metrics = method.training_step((inputs, target, ab))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(metrics) == {"color_acc", "ab_error"}


def test_visualize_returns_three_tiles_per_image():
    method = make_method().eval()
    picture = method.visualize(colour_images(5, 32))
    gap = 2  # white pixels between tiles
    assert picture.size == (3 * 96 + 2 * gap, 5 * 96 + 4 * gap)
    assert make_method(image_size=64).eval().visualize(colour_images(10, 64)).size == (3 * 128 + 2 * gap, 8 * 128 + 7 * gap)


@pytest.mark.slow
def test_short_run_learns():
    # One fixed batch, no augmentation: the bin scores learn the batch's colours within a few steps.
    method = make_method(rebalance=0.0)
    images = colour_images(8, 32, seed=3)
    views = method._lab_views(images.float() / 255, method.out_size)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss, metrics = method.training_step(views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > math.log(NUM_BINS) - 1.5
    assert sum(losses[-3:]) / 3 < losses[0] - 1.5, losses
    assert metrics["color_acc"] > 0.3


def test_refuses_tiny_views(cli, tmp_path):
    r = cli("pretrain", "--method", "colorization", "--epochs", "1", *TINY, "--set", "data.image_size=12",
            "--out", tmp_path / "run")
    assert r.code == 2
    assert "at least 16 px" in r.err and "augment.crop_size" in r.err
    assert not (tmp_path / "run").exists()


def test_cli_smoke_run_writes_visual(cli, tmp_path):
    r = cli("pretrain", "--method", "colorization", "--epochs", "2", *TINY, "--set", "data.synthetic_train=32",
            "--set", "data.synthetic_val=8", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    assert (tmp_path / "run" / "visual.png").stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [rec for rec in records if "epoch_seconds" in rec][-1]
    assert {"loss", "color_acc", "ab_error"} <= set(final)


def test_setup_refuses_when_no_sampled_image_decodes(tmp_path):
    from conftest import write_bad_images

    from sslcli.data.damaged import BadImages
    from sslcli.data.images import Split
    from sslcli.errors import UserError

    files = list(write_bad_images(tmp_path).values())
    split = Split(labels=torch.full((3,), -1), files=files, size=32, bad=BadImages("x", 3, 1.0))
    method = make_method()
    with pytest.raises(UserError, match="none of the 3 training images sampled for the colour prior could be decoded"):
        method.setup(split)
