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
    # two 5x5 images, each with one mark placed by hand: image 0 at row 0, column 1 (value 1),
    # image 1 at row 2, column 4 (value 2); a counter-clockwise quarter turn of an n x n image
    # carries (r, c) to (n - 1 - c, r)
    x = torch.zeros(2, 1, 5, 5)
    x[0, 0, 0, 1] = 1.0
    x[1, 0, 2, 4] = 2.0
    rotated, labels = rotate_all(x)
    assert rotated.shape == (8, 1, 5, 5) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    expected = {0: [(0, 1), (2, 4)], 1: [(3, 0), (0, 2)], 2: [(4, 3), (2, 0)], 3: [(1, 4), (4, 2)]}
    for k, marks in expected.items():
        for i, (r, c) in enumerate(marks):
            image = rotated[2 * k + i, 0]
            assert torch.nonzero(image).tolist() == [[r, c]], (k, i)
            assert image[r, c] == i + 1  # block k holds the images in their original order
