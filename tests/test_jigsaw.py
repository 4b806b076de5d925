import pytest
import torch

from sslcli.methods._permutations import TILES, _cache_path, all_orders, hamming_permutations, min_hamming_distance
from sslcli.methods.jigsaw import cut_tiles, normalise_tiles, shuffle_tiles, unshuffle_tiles

from conftest import CHECKPOINT_AT_END, TINY
from test_engine import epoch_records


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCLI_CACHE", str(tmp_path / "cache"))


def test_permutation_set_size_distinct_far_apart_and_deterministic():
    perms = hamming_permutations(100, seed=0)
    assert perms.shape == (100, TILES)
    assert all(sorted(p.tolist()) == list(range(TILES)) for p in perms)  # each row is a permutation
    assert len({tuple(p.tolist()) for p in perms}) == 100
    assert min_hamming_distance(perms) >= 6  # measured: 6; 100 random orders of 9! give 3
    random_orders = all_orders()[torch.randperm(362880, generator=torch.Generator().manual_seed(0))[:100]].long()
    assert min_hamming_distance(random_orders) < min_hamming_distance(perms)
    assert not torch.equal(perms, hamming_permutations(100, seed=1, cache=False))


def test_the_cache_file_holds_the_set_with_its_key_and_is_what_a_second_call_returns(monkeypatch):
    import sslcli.methods._permutations as P

    perms = hamming_permutations(20, seed=3)
    saved = torch.load(_cache_path(20, 3), weights_only=True)
    assert (saved["algorithm"], saved["count"], saved["seed"]) == (P.PERMUTATION_ALGORITHM, 20, 3)
    assert torch.equal(saved["perms"], perms)
    # a second call reads the file: make the greedy search unusable, and the set still comes back
    monkeypatch.setattr(torch, "minimum", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert torch.equal(hamming_permutations(20, seed=3), perms)


@pytest.mark.parametrize("damage", ["wrong-set", "other-count", "other-algorithm", "bad-checksum", "not-a-set",
                                    "garbage-bytes"])
def test_a_cache_file_that_does_not_check_out_is_recomputed_with_a_warning(capsys, damage):
    import sslcli.methods._permutations as P

    truth = hamming_permutations(12, seed=0, cache=False)
    path = _cache_path(12, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    other = hamming_permutations(12, seed=5, cache=False)
    entry = {"algorithm": P.PERMUTATION_ALGORITHM, "count": 12, "seed": 0, "perms": other, "sha256": P._digest(other)}
    if damage == "other-count":
        entry = {**entry, "count": 13}
    elif damage == "other-algorithm":
        entry = {**entry, "algorithm": 0, "perms": truth, "sha256": P._digest(truth)}
    elif damage == "bad-checksum":
        entry = {**entry, "perms": truth, "sha256": "0" * 64}
    elif damage == "not-a-set":
        entry = truth  # the old format: a bare tensor, trusted when its shape matched
    if damage == "garbage-bytes":
        path.write_bytes(b"\x00not a torch file")
    else:
        torch.save(entry, path)
    capsys.readouterr()
    assert torch.equal(hamming_permutations(12, seed=0), truth)
    err = capsys.readouterr().err
    assert f"warning: jigsaw permutation cache '{path}' is not usable" in err and "recomputing it" in err
    assert torch.equal(torch.load(path, weights_only=True)["perms"], truth)  # repaired on disk


def test_greedy_choice_by_hand_for_a_small_set():
    perms = hamming_permutations(3, seed=0, cache=False)
    # the 2nd is at distance 9 from the 1st (a derangement), the 3rd at distance 9 from both
    d = (perms[:, None] != perms[None]).sum(-1)
    assert d[0, 1] == 9 and d[0, 2] == 9 and d[1, 2] == 9


def test_min_hamming_distance_by_hand():
    p = torch.tensor([list(range(9)), [1, 0, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert min_hamming_distance(p) == 2


def _coordinate_images(n: int, side: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column."""
    rows = torch.arange(side).view(side, 1).expand(side, side).float()
    cols = torch.arange(side).view(1, side).expand(side, side).float()
    return torch.stack([rows, cols, torch.zeros(side, side)]).expand(n, 3, side, side).clone()


def test_tiles_sit_inside_their_cells():
    x = _coordinate_images(4, 30)  # cells of 10 px
    tiles = cut_tiles(x, 8, torch.Generator().manual_seed(0))
    assert tiles.shape == (4, 9, 3, 8, 8)
    for k in range(TILES):
        r, c = divmod(k, 3)
        top, left = tiles[:, k, 0, 0, 0], tiles[:, k, 1, 0, 0]
        assert ((top >= 10 * r) & (top + 8 <= 10 * (r + 1))).all()
        assert ((left >= 10 * c) & (left + 8 <= 10 * (c + 1))).all()
        # a tile is a contiguous window
        assert torch.equal(tiles[:, k, 0, :, 0] - top.view(-1, 1), torch.arange(8.0).expand(4, 8))


def test_labels_reconstruct_the_arrangement():
    perms = hamming_permutations(10, seed=0)
    x = _coordinate_images(5, 30)
    tiles = cut_tiles(x, 8, torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 9, 5, 3])
    shuffled = shuffle_tiles(tiles, perms, labels)
    for n in range(5):
        for i in range(TILES):
            cell = int(perms[labels[n], i])  # position i shows the tile of this grid cell
            assert int(shuffled[n, i, 0, 0, 0]) // 10 == cell // 3 and int(shuffled[n, i, 1, 0, 0]) // 10 == cell % 3
    assert torch.equal(unshuffle_tiles(shuffled, perms, labels), tiles)


def test_channel_jitter_and_normalisation():
    x = _coordinate_images(2, 30)
    jittered = cut_tiles(x, 8, torch.Generator().manual_seed(0), channel_jitter=1)
    plain = cut_tiles(x, 8, torch.Generator().manual_seed(0))
    assert (jittered[:, :, 0] - plain[:, :, 0]).abs().max() <= 1
    normed = normalise_tiles(torch.rand(3, 9, 3, 8, 8) * 5 + 2, torch.Generator().manual_seed(0), grayscale=1.0)
    assert normed.mean((2, 3, 4)).abs().max() < 1e-4
    assert torch.allclose(normed[:, :, 0], normed[:, :, 1])  # all grey


def test_bad_inputs():
    with pytest.raises(ValueError):
        hamming_permutations(1)
    with pytest.raises(ValueError):
        cut_tiles(torch.zeros(1, 3, 30, 30), 11, torch.Generator())


@pytest.mark.slow
def test_jigsaw_pretrain_learns_and_refuses_small_views(cli, tmp_path):
    fixed = ["--set", "data.synthetic_train=32", "--epochs", "30", *CHECKPOINT_AT_END, "--set", "method.num_permutations=4",
             "--set", "optim.lr=0.3", "--set", "optim.warmup_epochs=0", "--set", "optim.schedule=constant",
             "--set", "augment.crop_scale=[1.0,1.0]", "--set", "augment.color_jitter=0", "--set", "augment.grayscale=0"]
    r = cli("pretrain", "--method", "jigsaw", *TINY, *fixed, "--set", "train.precision=fp32", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    records = epoch_records(tmp_path / "run")
    first, last = records[:3], records[-3:]
    assert sum(r["jigsaw_acc"] for r in last) / 3 > sum(r["jigsaw_acc"] for r in first) / 3 + 0.2
    small = cli("pretrain", "--method", "jigsaw", *TINY, "--set", "data.image_size=16", "--out", tmp_path / "small")
    assert small.code == 2 and "tiles must be at least 8 px" in small.err and not (tmp_path / "small").exists()


def test_patch_input_side_and_resize():
    from sslcli.methods.base import patch_input_side, resize_patches

    assert patch_input_side(18) == 32 and patch_input_side(64) == 64 and patch_input_side(18, 24) == 24
    tiles = torch.rand(2, 9, 3, 18, 18)
    same = resize_patches(tiles, 18)
    assert same is tiles
    up = resize_patches(tiles, 32)
    assert up.shape == (2, 9, 3, 32, 32)
    flat = torch.full((4, 3, 10, 10), 0.25)  # a flat patch stays flat at any size
    assert torch.allclose(resize_patches(flat, 7), torch.full((4, 3, 7, 7), 0.25))
