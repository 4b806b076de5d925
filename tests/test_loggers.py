"""The Logger protocol: every destination of a run's numbers gets the same records from the
trainer, which knows none of them."""

import json

import pytest

from sslcli.engine import loggers
from sslcli.engine.loggers import MetricsFile, RunStart

from conftest import TINY
from test_engine import epoch_records


class Recorder:
    """A logger that keeps what it is given."""

    def __init__(self):
        self.starts, self.steps, self.epochs, self.closed = [], [], [], []

    def start(self, run):
        self.starts.append(run)

    def log_step(self, record):
        self.steps.append(dict(record))

    def log_epoch(self, record, warning):
        self.epochs.append((dict(record), warning))

    def close(self, ok):
        self.closed.append(ok)


@pytest.fixture
def recorder(monkeypatch):
    from sslcli.engine import trainer

    made = Recorder()
    monkeypatch.setattr(trainer, "run_loggers", lambda out, console, main, recipe: [*loggers.run_loggers(out, console, main, recipe), made])
    return made


def test_a_logger_added_to_a_run_gets_every_step_and_epoch(cli, tmp_path, recorder):
    r = cli("pretrain", "--method", "rotation", *TINY, "--epochs", "2", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    assert recorder.starts == [RunStart("rotation", 6, 0, 2, 20)]  # 96 images, batch 32, 2 epochs
    assert [s["step"] for s in recorder.steps] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "images_per_s", "rotation_acc"} <= s.keys() for s in recorder.steps)
    written = epoch_records(tmp_path / "run")
    assert [e["epoch"] for e, _ in recorder.epochs] == [r["epoch"] for r in written] == [1, 2]
    for (given, _), kept in zip(recorder.epochs, written):
        assert given["loss"] == pytest.approx(kept["loss"], abs=1e-6)  # metrics.jsonl rounds to 6 places
    assert recorder.closed == [True] and (tmp_path / "run" / "curves.png").is_file()


def test_a_resumed_run_tells_its_loggers_where_it_starts(cli, tmp_path, recorder):
    run = ["--method", "rotation", *TINY, "--out", tmp_path / "run"]
    assert cli("pretrain", *run, "--epochs", "1").code == 0
    r = cli("pretrain", *run, "--epochs", "2", "--resume")
    assert r.code == 0, r.err
    assert recorder.starts[-1] == RunStart("rotation", 6, 3, 2, 20)
    assert [s["step"] for s in recorder.steps[-3:]] == [4, 5, 6]


def test_loggers_are_closed_when_the_run_fails(cli, tmp_path, recorder):
    r = cli("pretrain", "--method", "rotation", *TINY, "--epochs", "2", "--set", "optim.lr=1e30",
            "--set", "train.precision=fp32", "--out", tmp_path / "run")
    assert r.code == 1 and ("non-finite" in r.err or "loss became" in r.err), r.err
    assert recorder.closed == [False]


def test_metrics_file_keeps_every_log_every_th_step_and_every_epoch(tmp_path):
    logger = MetricsFile(tmp_path)
    logger.start(RunStart("simclr", 4, 0, 1, 2))
    for step in range(1, 5):
        logger.log_step({"step": step, "loss": 1 / 3})
    logger.log_epoch({"epoch": 1, "step": 4, "loss": 0.25, "epoch_seconds": 1.0}, None)
    logger.close(True)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("step") for line in lines] == [2, 4, 4]
    assert lines[0]["loss"] == 0.333333 and lines[-1]["epoch"] == 1
