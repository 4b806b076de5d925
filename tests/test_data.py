import numpy as np
import pytest
import torch
from PIL import Image

from sslcli.data import synthetic
from sslcli.data.images import load_image
from sslcli.data.sources import open_source
from sslcli.errors import UserError


def test_synthetic_is_deterministic_balanced_and_split():
    a, ya = synthetic.generate_shapes(40, seed=3, split="train", size=32)
    b, yb = synthetic.generate_shapes(40, seed=3, split="train", size=32)
    c, _ = synthetic.generate_shapes(40, seed=4, split="train", size=32)
    v, _ = synthetic.generate_shapes(40, seed=3, split="val", size=32)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c) and not np.array_equal(a, v)
    assert np.bincount(ya).tolist() == [4] * 10


def test_every_shape_has_an_up():
    """No outline looks the same after a quarter or half turn, so rotation is learnable."""
    for name, outline in synthetic.SHAPES.items():
        mask = synthetic._rasterise(np.asarray(outline, dtype=np.float32) * 0.9, 64, 4) > 0.5
        for k in (1, 2, 3):
            turned = np.rot90(mask, k)
            iou = (mask & turned).sum() / (mask | turned).sum()
            assert iou < 0.85, f"{name} is nearly symmetric under {90 * k} degrees (IoU {iou:.2f})"


def test_colour_does_not_give_the_class_away():
    images, labels = synthetic.generate_shapes(400, seed=0, split="train", size=32)
    mean_colour = images.reshape(len(images), -1, 3).mean(1)
    per_class = np.stack([mean_colour[labels == c].mean(0) for c in range(10)])
    assert per_class.std(0).max() < 12  # class means of the average colour nearly coincide


def _write_images(folder, n, size=(40, 30), colour=(200, 10, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, colour).save(folder / f"img{i}.jpg")


def test_labelled_train_val_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            _write_images(tmp_path / split / cls, 3)
    ds = open_source(str(tmp_path), 16)
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 6 and len(ds.val) == 6 and ds.labelled
    img, label = ds.train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == 0


def test_single_labelled_split_holds_out_val(tmp_path):
    for cls in ("a", "b"):
        _write_images(tmp_path / cls, 20)
    ds = open_source(str(tmp_path), 8)
    assert ds.labelled and len(ds.val) == 4 and len(ds.train) == 36
    assert sorted(ds.val.labels.tolist()) == [0, 0, 1, 1]


def test_flat_folder_is_unlabelled_with_auto_size(tmp_path):
    _write_images(tmp_path, 5, size=(50, 30))
    ds = open_source(str(tmp_path))
    assert not ds.labelled and ds.val is None and ds.image_size == 30
    assert (ds.train.labels == -1).all()


def test_load_image_resizes_shorter_side_and_centre_crops(tmp_path):
    img = np.zeros((20, 60, 3), dtype=np.uint8)
    img[:, 20:40] = 255  # a white centre third
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 10)
    assert out.shape == (3, 10, 10)
    assert out.float().mean() > 200  # the crop is the white centre


def _pil_decode(path, size):
    """The decode every JPEG had before simplejpeg: PIL, draft mode, then `square`."""
    from sslcli.data.images import square

    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        return square(img.convert("RGB"), size)


@pytest.mark.parametrize("side, size", [(64, 64), (48, 64), (100, 32), (512, 64)])
def test_jpeg_decodes_to_the_pixels_pil_gives(tmp_path, side, size):
    # full scale, and 1/2 and 1/8 scale where PIL's draft mode would shrink the decode
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=(side, side + 10), mode="bilinear")
    pixels = (smooth[0].permute(1, 2, 0).numpy() * 200 + rng.integers(0, 40, (side, side + 10, 3))).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=90)
    ours, pil = load_image(tmp_path / "a.jpg", size), _pil_decode(tmp_path / "a.jpg", size)
    assert ours.shape == (3, size, size)
    assert torch.equal(ours, pil)


def test_grey_and_cmyk_jpegs_decode_to_rgb(tmp_path):
    Image.new("L", (40, 40), 120).save(tmp_path / "grey.jpg")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    grey, cmyk = load_image(tmp_path / "grey.jpg", 32), load_image(tmp_path / "cmyk.jpg", 32)
    assert grey.shape == cmyk.shape == (3, 32, 32)
    assert (grey.int() - 120).abs().max() <= 2
    assert (cmyk.int() - _pil_decode(tmp_path / "cmyk.jpg", 32).int()).abs().max() <= 2  # red, +-1 by decoder


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "holds no images"),
])
def test_bad_folders(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        open_source(str(make(tmp_path)))


def test_pretrain_streams_from_files_when_not_cached(cli, tmp_path):
    for split in ("train", "val"):
        for cls in ("red", "blue"):
            colour = (220, 20, 20) if cls == "red" else (20, 20, 220)
            _write_images(tmp_path / "data" / split / cls, 8, size=(24, 24), colour=colour)
    r = cli("pretrain", "--method", "rotation", "--data", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "1",
            "--batch-size", "8", "--set", "data.cache_max_gb=0", "--set", "data.workers=1", "--json")
    assert r.code == 0, r.err
    assert r.json["steps"] == 2


def test_torchvision_source_failure_names_the_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(UserError, match=str(tmp_path / "c10")):
        open_source("cifar10", root=str(tmp_path / "c10"))


def test_method_refuses_data_of_another_kind():
    from sslcli.methods.base import Method
    from sslcli.recipe import resolve_recipe

    class ClipOrder(Method):
        name = "clip-order"
        data_kind = "video"

    recipe = resolve_recipe({"method": {"name": "rotation"}}, lambda name: Method.Config)
    images = open_source("synthetic:shapes", 16, synthetic_train=10, synthetic_val=10)
    with pytest.raises(UserError, match="trains on video clips, but 'synthetic:shapes' holds images"):
        ClipOrder.check_data(images, recipe)
