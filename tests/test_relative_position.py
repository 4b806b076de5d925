import pytest
import torch
from conftest import TINY
from test_engine import LEARN, epoch_records

from sslcli.methods.base import MethodContext
from sslcli.methods.relative_position import (
    ANCHOR,
    NEIGHBOUR_INDICES,
    NEIGHBOUR_OFFSETS,
    extract_patches,
    grid_extent,
    pair_labels,
    resolve_geometry,
)


def coordinate_images(n: int, side: int) -> torch.Tensor:
    """Images whose channel 0 holds each pixel's row, channel 1 its column, channel 2 the image index."""
    rows = torch.arange(side, dtype=torch.float).view(side, 1).expand(side, side)
    cols = torch.arange(side, dtype=torch.float).view(1, side).expand(side, side)
    return torch.stack([torch.stack([rows, cols, torch.full((side, side), float(i))]) for i in range(n)])


def test_labels_reconstruct_the_arrangement():
    patch, gap, jitter, side = 5, 2, 2, 26  # grid 15 + 4 + 4 = 23 px: 3 px of slack for the grid's corner
    images = coordinate_images(16, side)
    patches, origins = extract_patches(images, patch, gap, jitter, torch.Generator().manual_seed(0))
    assert patches.shape == (16, 9, 3, patch, patch) and origins.shape == (16, 9, 2)
    assert not origins.is_floating_point()
    # every patch is the pixels at its origin: its top-left pixel names its own coordinates
    top_left = patches[:, :, :2, 0, 0]
    assert torch.equal(top_left, origins.float())
    steps = torch.arange(patch, dtype=torch.float)
    assert torch.equal(patches[:, :, 0], (origins[..., 0, None, None] + steps.view(patch, 1)).expand_as(patches[:, :, 0]))
    assert torch.equal(patches[:, :, 1], (origins[..., 1, None, None] + steps.view(1, patch)).expand_as(patches[:, :, 1]))
    assert torch.equal(patches[:, :, 2], torch.arange(16.0).view(16, 1, 1, 1).expand(16, 9, patch, patch))
    # inside the image
    assert origins.min() >= 0 and origins.max() + patch <= side
    # label k: the neighbour sits NEIGHBOUR_OFFSETS[k] grid steps from the anchor, up to both jitters
    anchor = top_left[:, ANCHOR]
    for k, (index, offset) in enumerate(zip(NEIGHBOUR_INDICES, NEIGHBOUR_OFFSETS)):
        shift = top_left[:, index] - anchor
        expected = torch.tensor(offset, dtype=torch.float) * (patch + gap)
        assert (shift - expected).abs().max() <= 2 * jitter, k
    # and the jitter is really used: offsets are not all exact
    exact = top_left[:, NEIGHBOUR_INDICES] - anchor[:, None] - torch.tensor(NEIGHBOUR_OFFSETS).float() * (patch + gap)
    assert exact.abs().max() > 0


def test_neighbour_order_is_row_major_around_the_anchor():
    assert NEIGHBOUR_OFFSETS == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert NEIGHBOUR_INDICES == [0, 1, 2, 3, 5, 6, 7, 8] and ANCHOR == 4
    assert pair_labels(2).tolist() == [0, 1, 2, 3, 4, 5, 6, 7] * 2


def test_without_jitter_the_grid_is_exact_and_can_sit_anywhere():
    patch, gap, side = 4, 3, 30
    images = coordinate_images(64, side)
    _, origins = extract_patches(images, patch, gap, 0, torch.Generator().manual_seed(1))
    corner = origins[:, 0]
    for index in range(9):
        step = torch.tensor([index // 3, index % 3]) * (patch + gap)
        assert torch.equal(origins[:, index], corner + step)
    slack = side - grid_extent(patch, gap, 0)  # 12 px
    assert corner.min() == 0 and corner.max() == slack  # 64 draws of 13 positions reach both ends


def test_deterministic_given_the_generator_state():
    images = torch.rand(4, 3, 32, 32)
    a = extract_patches(images, 8, 2, 1, torch.Generator().manual_seed(7))
    b = extract_patches(images, 8, 2, 1, torch.Generator().manual_seed(7))
    c = extract_patches(images, 8, 2, 1, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_grid_that_does_not_fit_is_refused():
    images = torch.rand(2, 3, 32, 32)
    extract_patches(images, 8, 2, 1)  # 30 px: fits
    extract_patches(images, 10, 1, 0)  # exactly 32 px: fits
    with pytest.raises(ValueError, match="needs 33 px"):
        extract_patches(images, 9, 2, 1)
    with pytest.raises(ValueError, match="square"):
        extract_patches(torch.rand(2, 3, 32, 30), 4, 1, 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        extract_patches(torch.rand(3, 32, 32), 4, 1, 1)


@pytest.mark.parametrize("side", [16, 24, 32, 48, 64, 96, 224])
def test_auto_geometry_always_fits(side):
    patch, gap, jitter = resolve_geometry("auto", "auto", "auto", side)
    assert patch >= 3 and gap >= 1 and grid_extent(patch, gap, jitter) <= side
    assert resolve_geometry(7, "auto", 0, side)[::2] == (7, 0)
    assert resolve_geometry(8, 2, 1, 32) == (8, 2, 1)


def test_auto_geometry_values():
    assert resolve_geometry("auto", "auto", "auto", 32) == (8, 2, 1)
    assert resolve_geometry("auto", "auto", "auto", 64) == (17, 4, 2)


# The smoke and learning runs keep the fp32 they were calibrated in. (Patches of 9 to 16 px reach
# ResNet's last stride-2 convolution as 1x1 maps, where bf16 on the CPU is guarded: test_precision.)
FP32 = ["--set", "train.precision=fp32"]


def test_cli_smoke_run(cli, tmp_path):
    r = cli("pretrain", "--method", "relative-position", "--epochs", "2", *TINY, *FP32, "--set", "data.synthetic_train=64",
            "--out", tmp_path / "run")
    assert r.code == 0, r.err
    records = epoch_records(tmp_path / "run")
    assert len(records) == 2 and all(0 <= rec["position_acc"] <= 1 for rec in records)
    assert (tmp_path / "run" / "visual.png").is_file()


def test_views_too_small_for_the_grid_are_refused(cli, tmp_path):
    r = cli("pretrain", "--method", "relative-position", "--epochs", "1", *TINY, "--set", "method.patch=12",
            "--out", tmp_path / "run")
    assert r.code == 2
    message = " ".join(r.err.split())
    assert "relative-position needs views of at least 42 px" in message
    assert "12-px patches (gap 2, jitter 1)" in message and "the views are 32 px" in message
    assert "lower method.patch or raise data.image_size" in message
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def mean_of(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


@pytest.mark.slow
def test_short_run_learns_positions(cli, tmp_path):
    # 64 images seen 20 times (40 steps) with mild augmentation: accuracy climbs from chance
    # (0.125) to about 0.27 and the loss falls by about 0.25. The 8-px patches go in as they are:
    # this calibration predates the 32-px auto input, with which 40 steps are too few.
    learn = [*LEARN, "--set", "method.patch_input=8", *FP32]
    r = cli("pretrain", "--method", "relative-position", "--out", tmp_path / "run", *learn)
    assert r.code == 0, r.err
    records = epoch_records(tmp_path / "run")
    assert len(records) == 20
    assert mean_of(records[-3:], "position_acc") > mean_of(records[:3], "position_acc") + 0.06
    assert mean_of(records[-3:], "loss") < mean_of(records[:3], "loss") - 0.1


def test_auto_patches_with_too_wide_gaps_are_refused(cli, tmp_path):
    r = cli("pretrain", "--method", "relative-position", "--epochs", "1", *TINY, "--set", "method.gap=14",
            "--set", "augment.crop_size=24", "--out", tmp_path / "run")
    assert r.code == 2
    message = " ".join(r.err.split())
    assert "at least 33 px for its 3x3 grid of patches (gap 14, jitter 1), but the views are 24 px" in message
    assert "lower method.gap or method.jitter or raise augment.crop_size" in message


def test_each_pair_reaches_the_head_with_the_label_of_where_its_neighbour_sits():
    """Coordinate images through the real patch cutter and pairing: a stand-in backbone reads each
    patch's top-left coordinates, and a recording head sees the (anchor, neighbour) pairs. For every
    pair, the label it is trained with must name the direction from anchor to neighbour."""
    from sslcli.backbones import create_backbone
    from sslcli.recipe import resolve_recipe
    from sslcli.registry import get_method

    raw = {"method": {"name": "relative-position", "patch": 5, "gap": 2, "jitter": 1}, "data": {"image_size": 26},
           "backbone": {"name": "resnet18", "small_input": False}}
    recipe = resolve_recipe(raw, lambda n: get_method(n).Config)
    backbone, info = create_backbone("resnet18", False, 26)
    method = get_method("relative-position")(MethodContext(recipe, backbone, info.feature_dim, 26))

    class Corner(torch.nn.Module):  # a patch's feature: its top-left (row, column), padded
        def forward(self, x):
            return torch.nn.functional.pad(x[:, :2, 0, 0], (0, info.feature_dim - 2))

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, pairs):
            seen.append(pairs)
            return torch.zeros(len(pairs), 8)

    method.backbone = Corner()
    method.head = Recorder()
    images = coordinate_images(12, 26)
    patches, _ = extract_patches(images, 5, 2, 1, torch.Generator().manual_seed(3))
    method.logits(patches.flatten(0, 1))
    pairs = seen[0]
    labels = pair_labels(12)
    assert pairs.shape == (96, 2 * info.feature_dim) and labels.shape == (96,)
    anchor, neighbour = pairs[:, :2], pairs[:, info.feature_dim:info.feature_dim + 2]
    step = neighbour - anchor  # in px: one grid step is patch + gap = 7 px, give or take two 1-px jitters
    for pair in range(96):
        expected = torch.tensor(NEIGHBOUR_OFFSETS[int(labels[pair])], dtype=torch.float) * 7
        assert (step[pair] - expected).abs().max() <= 2, (pair, step[pair].tolist(), expected.tolist())
    assert torch.equal(anchor.view(12, 8, 2)[:, 0], patches[:, ANCHOR, :2, 0, 0])  # each image's own centre patch
