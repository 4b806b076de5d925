import json

import numpy as np
import pytest
import torch
from conftest import TINY

from sslcli.backbones import create_backbone
from sslcli.data.images import Batch
from sslcli.methods.base import MethodContext
from sslcli.data.sources import open_source
from sslcli.errors import UserError
from sslcli.methods.inpainting import Inpainting, block_side, make_mask, masked_l2
from sslcli.recipe import resolve_recipe
from sslcli.registry import get_method


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads per process thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(size: int = 32, augment: dict | None = None, **method):
    raw = {"method": {"name": "inpainting", **method}, "data": {"image_size": size},
           "backbone": {"small_input": False}, "augment": augment or {}}
    return resolve_recipe(raw, lambda name: get_method(name).Config)


def build(size: int = 32, augment: dict | None = None, **method) -> Inpainting:
    r = recipe(size, augment, **method)
    torch.manual_seed(0)
    backbone, info = create_backbone("resnet18", False, size)
    return Inpainting(MethodContext(r, backbone, info.feature_dim, size))


# ---------------------------------------------------------------- masks

@pytest.mark.parametrize("size, fraction, side, start", [(32, 0.25, 16, 8), (15, 0.25, 8, 3), (64, 0.1, 20, 22)])
def test_center_mask_covers_exactly_the_declared_square(size, fraction, side, start):
    mask = make_mask(3, size, "center", None, fraction=fraction, blocks=4)
    assert mask.shape == (3, 1, size, size) and mask.dtype == torch.bool
    assert int(mask.sum()) == 3 * side * side
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[start:start + side, start:start + side] = True
    assert all(torch.equal(m[0], expected) for m in mask)


def test_one_random_block_is_a_whole_square_inside_the_image_anywhere_it_fits():
    size, side = 8, 6  # 3 places per axis
    assert block_side(size, 0.5625, 1) == side
    mask = make_mask(300, size, "random", torch.Generator().manual_seed(0), fraction=0.5625, blocks=1)
    tops, lefts = [], []
    for m in mask[:, 0]:
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        assert int(m.sum()) == side * side  # never cut by the border
        assert len(rows) == side and len(cols) == side
        assert torch.equal(rows, torch.arange(rows[0], rows[0] + side))  # one contiguous square
        tops.append(int(rows[0]))
        lefts.append(int(cols[0]))
    assert set(tops) == {0, 1, 2} and set(lefts) == {0, 1, 2}  # every position reached, none beyond


@pytest.mark.parametrize("size, fraction, blocks", [(32, 0.25, 4), (32, 0.2, 3), (48, 0.5, 2), (64, 0.05, 8)])
def test_random_blocks_hide_at_most_the_fraction(size, fraction, blocks):
    side = block_side(size, fraction, blocks)
    mask = make_mask(64, size, "random", torch.Generator().manual_seed(1), fraction=fraction, blocks=blocks)
    counts = mask.flatten(1).sum(1)
    assert (counts >= side * side).all() and (counts <= blocks * side * side).all()
    assert (counts <= fraction * size * size).all()
    assert mask.float().mean() > 0.5 * fraction  # overlaps are rare enough that most of it is hidden


def test_random_masks_follow_the_generator():
    def masks(seed):
        return make_mask(16, 32, "random", torch.Generator().manual_seed(seed), fraction=0.25, blocks=4)

    assert torch.equal(masks(5), masks(5))
    assert not torch.equal(masks(5), masks(6))
    gen = torch.Generator().manual_seed(5)
    first = make_mask(16, 32, "random", gen, fraction=0.25, blocks=4)
    assert not torch.equal(first, make_mask(16, 32, "random", gen, fraction=0.25, blocks=4))  # state advanced


def test_make_mask_refuses_unknown_mode_and_bad_fraction():
    with pytest.raises(ValueError, match="'center' or 'random'"):
        make_mask(1, 8, "corner", None, fraction=0.25, blocks=1)
    with pytest.raises(ValueError, match="fraction"):
        make_mask(1, 8, "center", None, fraction=0.0, blocks=1)


# ---------------------------------------------------------------- loss

def test_masked_l2_by_hand():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]]])
    mask = torch.tensor([[[[False, True], [False, True]]]])  # the right column is hidden
    # hidden squared errors 2^2, 4^2 (channel 0) and 0, 2^2 (channel 1): (4 + 16 + 0 + 4) / 4 = 6
    assert masked_l2(pred, target, mask).item() == pytest.approx(6.0)
    # visible: 1, 9, 0, 0 -> 2.5; 6 + 0.1 * 2.5
    assert masked_l2(pred, target, mask, context_weight=0.1).item() == pytest.approx(6.25)
    # a per-channel mask gives the same value when it repeats the single-channel one
    assert masked_l2(pred, target, mask.expand(1, 2, 2, 2)).item() == pytest.approx(6.0)
    assert masked_l2(target, target, mask).item() == 0.0


@pytest.mark.parametrize("pred, target, mask, words", [
    (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5), torch.ones(1, 1, 4, 4, dtype=torch.bool), "differ in shape"),
    (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool), "hides no pixel"),
    (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 2, 4, 4, dtype=torch.bool), "does not fit"),
    (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4), "bool"),
    (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), r"\(N, C, H, W\)"),
])
def test_masked_l2_refuses_bad_input(pred, target, mask, words):
    with pytest.raises(ValueError, match=words):
        masked_l2(pred, target, mask)


# ---------------------------------------------------------------- plugin

def test_views_hide_the_mask_and_keep_the_rest(one_thread):
    method = build(32, augment={"crop_size": 24}, mask="random")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    masked, mask, target = method.make_views(Batch.of(images), torch.Generator().manual_seed(0))
    assert masked.shape == target.shape == (4, 3, 24, 24) and mask.shape == (4, 1, 24, 24)
    m = mask.expand_as(target)
    assert (masked[m] == 0).all() and torch.equal(masked[~m], target[~m])
    again = method.make_views(Batch.of(images), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((masked, mask, target), again))


def test_visualize_rows_of_input_reconstruction_truth(one_thread):
    method = build(32).eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    picture = method.visualize(images)
    tile = 96  # 32 px upscaled 3 times; 2 px gaps; at most 8 rows
    assert picture.size == (3 * tile + 2 * 2, 8 * tile + 7 * 2)
    pixels = torch.from_numpy(np.array(picture))
    assert (pixels[tile // 2, tile // 2] == 128).all()  # the hidden centre shows grey in the input tile
    truth = images[0].permute(1, 2, 0)
    assert torch.equal(pixels[0:tile:3, 2 * (tile + 2):2 * (tile + 2) + tile:3], truth)
    assert picture.size == method.visualize(images[:8]).size
    assert torch.equal(pixels, torch.from_numpy(np.array(method.visualize(images))))


@pytest.mark.parametrize("size, augment, key", [(12, {}, "data.image_size"), (32, {"crop_size": 8}, "augment.crop_size")])
def test_check_data_refuses_views_below_16_px(size, augment, key):
    data = open_source("synthetic:shapes", size, synthetic_train=4, synthetic_val=4)
    with pytest.raises(UserError, match=f"at least 16 px.*{key}"):
        Inpainting.check_data(data, recipe(size, augment))
    Inpainting.check_data(open_source("synthetic:shapes", 16, synthetic_train=4, synthetic_val=4), recipe(16))


@pytest.mark.parametrize("method, words", [({"fraction": 0.9}, "at most 0.75"), ({"mask": "corner"}, "'center' or 'random'"),
                                           ({"blocks": 0}, "at least 1")])
def test_config_refuses_bad_values(method, words):
    with pytest.raises(UserError, match=words):
        recipe(32, **method)


@pytest.mark.parametrize("stages, channels", [(3, [128, 256, 512]), (1, [512])])
def test_decoder_reads_the_last_stages(stages, channels, one_thread):
    # ResNet-18's layer2, layer3, layer4 have 128, 256, 512 channels; the laterals show which are read
    method = build(32, decoder_stages=stages)
    assert [lat.in_channels for lat in method.decoder.lateral] == channels
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loss, _ = method.training_step(method.make_views(Batch.of(images), torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("depth", [1, 3])
def test_decoder_depth_stacks_3x3_blocks(depth, one_thread):
    method = build(32, decoder_depth=depth)
    kernels = [m.kernel_size for m in method.decoder.fuse if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(3, 3)] * depth + [(1, 1)]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loss, _ = method.training_step(method.make_views(Batch.of(images), torch.Generator().manual_seed(0)))
    assert torch.isfinite(loss)


def test_decoder_stages_beyond_the_backbone_are_refused():
    with pytest.raises(UserError, match="decoder_stages is 9 .* between 1 and 5"):
        build(32, decoder_stages=9)


@pytest.mark.slow
def test_fixed_batch_is_learned(one_thread):
    # 16 fixed 16-px images, the centre hidden: 12 SGD steps cut the hidden-region error by half.
    method = build(16, augment={"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip": 0})
    images = open_source("synthetic:shapes", 16, synthetic_train=16, synthetic_val=4).train.images
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        loss, metrics = method.training_step(method.make_views(Batch.of(images), gen))
        assert metrics["masked_mse"] == loss.detach()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])


def test_cli_smoke_run_writes_the_picture(cli, tmp_path, one_thread):
    run = tmp_path / "run"
    r = cli("pretrain", "--method", "inpainting", "--epochs", "2", *TINY, "--set", "method.mask=random",
            "--set", "train.checkpoint_every=2", "--out", run)
    assert r.code == 0, r.err
    assert (run / "visual.png").is_file() and (run / "backbone.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [rec for rec in records if "epoch_seconds" in rec][-1]
    assert last["loss"] == pytest.approx(last["masked_mse"]) and last["psnr"] > 0
