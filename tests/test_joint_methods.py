"""The joint-embedding plugins: MoCo's queue, momentum encoders, SwAV's prototypes, PIRL's bank,
the collapse watch, and exact resume with their state."""

import math
import os
import signal

import pytest
import torch
from conftest import TINY
from test_engine import epoch_records

from sslcli.data.images import Batch
from sslcli.methods._joint import JointEmbedding, cosine_momentum, ema_update, momentum_copy
from sslcli.methods.base import MethodContext
from sslcli.methods.moco import enqueue
from sslcli.recipe import resolve_recipe

JOINT = ["moco", "swav", "pirl", "byol", "barlow-twins", "vicreg", "simclr"]


def build(name: str, **method):
    """A method plugin on a random ResNet-18 for 32-px images, as the engine builds it."""
    from sslcli.backbones import create_backbone
    from sslcli.registry import get_method

    raw = {"method": {"name": name, **method}, "data": {"image_size": 32},
           "backbone": {"name": "resnet18", "small_input": False}}
    recipe = resolve_recipe(raw, lambda n: get_method(n).Config)
    backbone, info = create_backbone("resnet18", False, 32)
    return get_method(name)(MethodContext(recipe, backbone, info.feature_dim, 32))


def test_enqueue_is_fifo_and_wraps_exactly():
    queue, pointer = torch.zeros(5, 2), torch.zeros((), dtype=torch.long)
    enqueue(queue, pointer, torch.tensor([[1.0, 1], [2, 2]]))
    enqueue(queue, pointer, torch.tensor([[3.0, 3], [4, 4]]))
    assert queue[:, 0].tolist() == [1, 2, 3, 4, 0] and int(pointer) == 4
    enqueue(queue, pointer, torch.tensor([[5.0, 5], [6, 6], [7, 7]]))  # 6 and 7 wrap to the start
    assert queue[:, 0].tolist() == [6, 7, 3, 4, 5] and int(pointer) == 2
    enqueue(queue, pointer, torch.arange(14.0).view(7, 2))  # more keys than slots: the last 5 stay
    assert sorted(queue[:, 0].tolist()) == [4, 6, 8, 10, 12]
    assert queue[int(pointer), 0] == 4  # the pointer sits on the oldest key, the next to go


def test_moco_step_scores_against_the_old_queue_then_enqueues_its_keys():
    torch.manual_seed(0)
    moco = build("moco", queue_size=16, symmetric=False)
    before = moco.queue.clone()
    views = moco.make_views(Batch.of(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)), torch.Generator().manual_seed(0))
    loss, metrics = moco.training_step(views)
    assert torch.isfinite(loss) and 0 <= float(metrics["pos_acc"]) <= 1
    assert int(moco.queue_pointer) == 4
    assert torch.equal(moco.queue[4:], before[4:]) and not torch.equal(moco.queue[:4], before[:4])
    keys = moco.keys(views)[4:]  # the second view's keys went in
    assert torch.allclose(moco.queue[:4], keys, atol=1e-5)


def test_momentum_copy_gets_no_gradient_and_follows_by_ema():
    online = torch.nn.Linear(3, 2)
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.weight.add_(1.0)
    old = target.weight.clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * old + 0.1 * online.weight)
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99) and cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995) and cosine_momentum(0.99, 0.7, ramp=False) == 0.99


def test_byol_target_gets_no_gradient():
    torch.manual_seed(0)
    byol = build("byol", proj_hidden_dim=64, proj_dim=32)
    views = byol.make_views(Batch.of(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)), torch.Generator().manual_seed(0))
    loss, _ = byol.training_step(views)
    loss.backward()
    assert all(p.grad is None for p in byol.target_backbone.parameters())
    assert all(p.grad is None for p in byol.target_projector.parameters())
    assert byol.predictor[0].weight.grad is not None and byol.backbone.conv1.weight.grad is not None


def test_byol_multi_crop_regresses_every_small_crop_onto_both_large_targets():
    from sslcli.losses import byol_loss

    torch.manual_seed(0)
    byol = build("byol", proj_hidden_dim=64, proj_dim=32, small_crops=2, small_crop_size=16)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    large, small = byol.make_views(Batch.of(images), torch.Generator().manual_seed(0))
    assert large.shape == (12, 3, 32, 32) and small.shape == (12, 3, 16, 16)
    byol.eval()  # batch statistics aside, the same forward passes the step makes
    loss, _ = byol.training_step((large, small))
    with torch.no_grad():
        p = byol.predictor(byol.projector(byol.backbone(large)))
        q = byol.predictor(byol.projector(byol.backbone(small)))
        t = byol.target_projector(byol.target_backbone(large))
    t1, t2 = t[:6], t[6:]
    pairs = [(p[:6], t2), (p[6:], t1), (q[:6], t1), (q[:6], t2), (q[6:], t1), (q[6:], t2)]
    expected = sum(2 - 2 * torch.cosine_similarity(a, b).mean() for a, b in pairs) / 6
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-5)
    assert float(byol_loss(p[:6], t2)) == pytest.approx(float(2 - 2 * torch.cosine_similarity(p[:6], t2).mean()), abs=1e-6)
    loss.backward()
    assert all(p.grad is None for p in byol.target_backbone.parameters())


def test_byol_without_small_crops_is_the_papers_symmetric_loss():
    torch.manual_seed(0)
    byol = build("byol", proj_hidden_dim=64, proj_dim=32)
    views = byol.make_views(Batch.of(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)), torch.Generator().manual_seed(0))
    assert isinstance(views, torch.Tensor) and views.shape == (8, 3, 32, 32)
    byol.eval()
    loss, _ = byol.training_step(views)
    with torch.no_grad():
        p = byol.predictor(byol.projector(byol.backbone(views)))
        t = byol.target_projector(byol.target_backbone(views))
    cos = torch.cosine_similarity
    expected = ((2 - 2 * cos(p[:4], t[4:]).mean()) + (2 - 2 * cos(p[4:], t[:4]).mean())) / 2
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("scale", ["[0.5, 0.2]", "[0, 0.3]", "[0.1, 1.5]"])
def test_multi_crop_refuses_a_bad_small_crop_scale(cli, tmp_path, scale):
    r = cli("pretrain", "--method", "byol", *TINY, "--set", f"method.small_crop_scale={scale}", "--out", tmp_path / "run")
    assert r.code == 2 and "method.small_crop_scale must be [low, high]" in r.err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_swav_prototypes_are_normalised_and_frozen_at_first():
    torch.manual_seed(0)
    swav = build("swav", prototypes=10, freeze_prototypes_steps=1, small_crops=2, small_crop_size=16)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    views = swav.make_views(Batch.of(images), torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(12, 3, 32, 32), (12, 3, 16, 16)]
    loss, metrics = swav.training_step(views)
    loss.backward()
    assert swav.prototypes.weight.grad is None  # frozen during the first step
    assert torch.allclose(swav.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-5)
    swav.on_step_end(0.5)
    loss, _ = swav.training_step(views)
    loss.backward()
    assert swav.prototypes.weight.grad is not None and 0 < float(metrics["prototypes_used"]) <= 1


def test_pirl_bank_is_one_unit_vector_per_image_and_moves_towards_the_embedding():
    from sslcli.data.sources import open_source

    torch.manual_seed(0)
    pirl = build("pirl", negatives=8)
    ds = open_source("synthetic:shapes", 32, purpose="train", synthetic_train=20, synthetic_val=4)
    pirl.setup(ds.train)
    assert pirl.bank.shape == (20, 128) and torch.allclose(pirl.bank.norm(dim=1), torch.ones(20), atol=1e-5)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    idx = torch.tensor([3, 7, 8, 19])
    before = pirl.bank.clone()
    views = pirl.make_views(Batch.of(images, indices=idx), torch.Generator().manual_seed(0))
    assert views[1].shape == (36, 3, 32, 32) and views[3].shape == (8,)
    pirl.training_step(views)
    changed = (pirl.bank != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7, 8, 19]


def test_collapse_watch_warns_only_when_the_spread_vanishes():
    class Probe(JointEmbedding):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.embedding_dim = None

    m = Probe()
    spread = m.spread(torch.randn(256, 64))
    assert float(spread["embedding_std"]) == pytest.approx(1 / math.sqrt(64), rel=0.15)
    assert m.epoch_warning({"embedding_std": float(spread["embedding_std"])}) is None
    collapsed = m.spread(torch.ones(256, 64) + 1e-4 * torch.randn(256, 64))
    warning = m.epoch_warning({"embedding_std": float(collapsed["embedding_std"])})
    assert warning and "collapsing" in warning


def test_swav_warns_when_its_codes_go_uniform_even_with_spread_embeddings():
    swav = build("swav", prototypes=16, small_crops=0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    _, metrics = swav.training_step(swav.make_views(Batch.of(images), torch.Generator().manual_seed(0)))
    assert 0 <= float(metrics["code_entropy"]) <= 1
    spread = 1 / math.sqrt(128)
    assert swav.epoch_warning({"code_entropy": 0.70, "embedding_std": spread}) is None
    warning = swav.epoch_warning({"code_entropy": 0.9999, "embedding_std": spread})
    assert warning and "codes are uniform" in warning and "method.epsilon" in warning
    assert "collapsing" in swav.epoch_warning({"code_entropy": 0.70, "embedding_std": 0.0})


@pytest.mark.parametrize("name", JOINT)
def test_every_joint_method_trains_and_logs_its_spread(cli, tmp_path, name):
    extra = {"moco": ["--set", "method.queue_size=64"], "swav": ["--set", "method.prototypes=16",
             "--set", "method.small_crop_size=16"], "pirl": ["--set", "method.negatives=32"]}.get(name, [])
    import resource

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    r = cli("pretrain", "--method", name, *TINY, "--epochs", "1", *extra, "--out", tmp_path / "run", "--json")
    assert r.code == 0, r.err
    record = epoch_records(tmp_path / "run")[-1]
    assert math.isfinite(record["loss"]) and record["embedding_std"] > 0
    assert 0 < r.json["epoch_seconds"] <= r.json["seconds"]
    # the reported peak is this process's peak resident set, in MiB: no less than before the run,
    # no more than after it (a wrong unit would be off by a factor of 1,024)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_before - 0.1 <= r.json["peak_memory_mb"] <= peak_after + 0.1


@pytest.mark.parametrize("name,extra", [
    ("moco", ["--set", "method.queue_size=40"]),
    ("pirl", ["--set", "method.negatives=16"]),
    ("swav", ["--set", "method.prototypes=8", "--set", "method.queue_size=64", "--set", "method.queue_start_epoch=1",
              "--set", "method.small_crop_size=16"]),
])
@pytest.mark.slow
def test_queue_and_bank_survive_an_interruption_and_resume_is_exact(cli, tmp_path, monkeypatch, name, extra):
    from sslcli.registry import get_method

    args = ["pretrain", "--method", name, "--epochs", "2", *TINY, *extra]
    assert cli(*args, "--out", tmp_path / "straight").code == 0
    method_cls = get_method(name)
    original = method_cls.on_step_end

    def interrupt_at_step_4(self, progress):  # 3 steps an epoch: step 4 is mid epoch 2
        original(self, progress)
        if round(progress * 6) == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(method_cls, "on_step_end", interrupt_at_step_4)
        r = cli(*args, "--out", tmp_path / "resumed")
    assert r.code == 130, r.err
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert cli(*args, "--out", tmp_path / "resumed", "--resume").code == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    state = [k for k in a if k.split(".")[-1] in ("queue", "queue_pointer", "bank")] + \
        [k for k in a if k.startswith("key_backbone.")]
    assert state and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert any(not torch.equal(saved[k], b[k]) for k in state)  # the state moved on after the resume


def _gather_rank(rank, world, init_file, result_file):
    import torch.distributed as dist

    from sslcli import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        keys = torch.full((2, 3), float(rank + 1))
        queue, pointer = torch.zeros(8, 3), torch.zeros((), dtype=torch.long)
        enqueue(queue, pointer, distributed.gather(keys))
        if rank == 1:
            torch.save(queue, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_moco_queues_every_ranks_keys_in_rank_order(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "q.pt")), nprocs=2)
    queue = torch.load(tmp_path / "q.pt")
    assert queue[:, 0].tolist() == [1, 1, 2, 2, 0, 0, 0, 0]  # rank 1 holds rank 0's keys too


def test_barlow_twins_projector_ends_without_a_bias():
    """The loss standardises every dimension over the batch, so a last bias gets a zero gradient."""
    assert build("barlow-twins", proj_hidden_dim=64, proj_dim=64).projector[-1].bias is None
