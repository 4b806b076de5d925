import torch

from sslcli.methods.rotation import rotate_all


def test_labels_name_the_rotation():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 0, 0] = 1.0  # a mark in the top-left corner
    rotated, labels = rotate_all(img)
    assert labels.tolist() == [0, 1, 2, 3]
    # counter-clockwise quarter turns carry the top-left mark to bottom-left, bottom-right, top-right
    corners = [tuple(torch.nonzero(r[0]).tolist()[0]) for r in rotated]
    assert corners == [(0, 0), (3, 0), (3, 3), (0, 3)]


def test_each_image_appears_at_every_rotation_in_blocks():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float).view(2, 3, 5, 5)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (8, 3, 5, 5)
    for k in range(4):
        assert torch.equal(rotated[2 * k:2 * k + 2], torch.rot90(x, k, dims=(2, 3)))
        assert (labels[2 * k:2 * k + 2] == k).all()
