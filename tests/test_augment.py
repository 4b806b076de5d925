import torch

from sslcli.data import augment as A


def batch(n=4, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_full_crop_without_flip_is_identity():
    x = batch()
    out = A.random_resized_crop(x, 8, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), flip=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_mirrors():
    x = batch()
    out = A.random_resized_crop(x, 8, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), flip=1.0)
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_crop_output_size_and_content_from_inside():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0
    out = A.random_resized_crop(x, 24, torch.Generator().manual_seed(1), scale=(0.05, 0.1), ratio=(1, 1))
    assert out.shape == (2, 3, 24, 24)
    assert 0 <= out.min() and out.max() <= 1


def test_same_generator_state_same_views():
    from sslcli.recipe import AugmentConfig

    aug = A.ViewAugment(AugmentConfig(blur=0.5), 8)
    x = (batch() * 255).to(torch.uint8)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hue_shift_matches_colorsys():
    import colorsys

    x = batch(4, 5)
    shift = torch.tensor([0.0, 0.1, -0.3, 0.5])
    out = A._shift_hue(x, shift)
    assert torch.allclose(out[0], x[0], atol=1e-5)  # no shift: the same colours
    for n in range(4):
        for i, j in ((0, 0), (2, 3), (4, 1)):
            h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
            expected = colorsys.hsv_to_rgb((h + float(shift[n])) % 1.0, s, v)
            assert torch.allclose(out[n, :, i, j], torch.tensor(expected), atol=1e-5)


def test_jitter_zero_is_identity_and_grayscale_equalises_channels():
    x = batch()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(A.color_jitter(x, g, 0.0, 1.0), x)
    gray = A.random_grayscale(x, g, 1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_blur_smooths_only_when_applied():
    x = batch(2, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(A.gaussian_blur(x, g, 0.0, (1.0, 2.0)), x)
    blurred = A.gaussian_blur(x, g, 1.0, (20.0, 20.0))
    assert blurred.shape == x.shape and blurred.std() < x.std() * 0.8


def test_solarize_inverts_only_values_above_one_half_and_only_when_drawn():
    x = torch.tensor([0.1, 0.49, 0.5, 0.9]).view(1, 1, 1, 4).repeat(2, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(A.solarize(x, g, 0.0), x)
    assert torch.allclose(A.solarize(x, g, 1.0)[0, 0, 0], torch.tensor([0.1, 0.49, 0.5, 0.1]))
    mixed = A.solarize(x.repeat(200, 1, 1, 1), torch.Generator().manual_seed(1), 0.2)
    flipped = (mixed[:, 0, 0, 3] != 0.9).float().mean()
    assert 0.1 < flipped < 0.3


def test_per_view_probabilities():
    from sslcli.recipe import AugmentConfig

    assert A.per_view(0.3, 0) == A.per_view(0.3, 1) == 0.3
    assert (A.per_view([1.0, 0.1], 0), A.per_view([1.0, 0.1], 1)) == (1.0, 0.1)
    cfg = AugmentConfig(blur=[1.0, 0.1], solarize=[0.0, 0.2])
    first, second = A.ViewAugment(cfg, 8, view=0), A.ViewAugment(cfg, 8, view=1)
    assert (first.blur, first.solarize, second.blur, second.solarize) == (1.0, 0.0, 0.1, 0.2)


def test_a_view_with_every_augmentation_off_is_the_image_normalised_by_hand():
    from sslcli.recipe import AugmentConfig

    cfg = AugmentConfig(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], flip=0.0, color_jitter=0.0, grayscale=0.0)
    x = torch.tensor([[0, 51], [153, 204]], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()
    out = A.ViewAugment(cfg, 2)(x, torch.Generator().manual_seed(0))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the paper families use
    for c in range(3):
        expected = torch.tensor([[0.0, 0.2], [0.6, 0.8]])
        assert torch.allclose(out[0, c], (expected - mean[c]) / std[c], atol=1e-4)


def test_a_quarter_area_crop_samples_half_the_width_at_half_pixel_steps():
    """A crop of area 1/4 and aspect 1 spans half the image side, so on a ramp that rises 15 per
    pixel the 16-px view rises 7.5 per pixel, wherever the crop lands, and rows stay constant."""
    from sslcli.recipe import AugmentConfig

    ramp = (torch.arange(16) * 15).to(torch.uint8)  # 0..225 across the columns
    x = ramp.view(1, 1, 1, 16).expand(6, 3, 16, 16).contiguous()
    cfg = AugmentConfig(crop_scale=[0.25, 0.25], crop_ratio=[1.0, 1.0], flip=0.0, color_jitter=0.0, grayscale=0.0)
    out = A.ViewAugment(cfg, 16).unnormalised(x, torch.Generator().manual_seed(4))
    steps = (out[:, 0, :, 2:14].diff(dim=-1) * 255)  # away from the edges, where reflection padding bends the ramp
    assert torch.allclose(steps, torch.full_like(steps, 7.5), atol=1e-3)
    assert torch.allclose(out[:, 0], out[:, 0, :1].expand_as(out[:, 0]), atol=1e-5)
    starts = out[:, 0, 0, 0] * 255
    assert len(set(starts.round().tolist())) > 1  # the crops land in different places


def test_augmentations_at_probability_zero_draw_no_random_numbers():
    """So a recipe that leaves blur and solarisation off keeps its exact views (and a run resumes
    to the same weights) whatever those keys' defaults draw when on."""
    x = batch()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert torch.equal(A.solarize(x, g, 0.0), x) and torch.equal(A.gaussian_blur(x, g, 0.0, (0.1, 2.0)), x)
    assert torch.equal(g.get_state(), state)
