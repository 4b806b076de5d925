import pytest
import torch
import torch.nn.functional as F

from sslcli.evaluation.knn import knn_predict, topk_accuracy


def test_known_answer_by_hand():
    # Train points on three axes; class = axis. Queries near an axis take its class.
    train = torch.eye(3).repeat(2, 1)  # 6 points, labels 0,1,2,0,1,2
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    queries = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.1, 1.0]]), dim=1)
    scores = knn_predict(train, labels, queries, 3, k=2, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 2]
    # k=2: both neighbours of query 0 are the class-0 points with sim q.e0, each weighs exp(sim/T).
    sim = float(queries[0, 0])
    assert scores[0, 0].item() == pytest.approx(2 * torch.exp(torch.tensor(sim / 0.1)).item(), rel=1e-5)
    assert scores[0, 1].item() == 0 and scores[0, 2].item() == 0


def test_weighting_prefers_closer_neighbour_over_count():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    # sims: 1.0 (class 0), 0.6, 0.6 (class 1). With a small T the single close one wins.
    assert knn_predict(train, labels, q, 2, k=3, temperature=0.05).argmax(1).item() == 0
    # With a large T votes are nearly equal and the two class-1 points win.
    assert knn_predict(train, labels, q, 2, k=3, temperature=100.0).argmax(1).item() == 1


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(2 / 3) and acc[5] == 1.0


def test_bad_shapes():
    with pytest.raises(ValueError):
        knn_predict(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 5), 2)
