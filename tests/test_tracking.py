"""The experiment trackers of `train.loggers`: TensorBoard event files that TensorBoard's own
reader reads back, an offline W&B run, an MLflow run in a local store; each package imported
only by a run that asks for it, and a missing one refused before anything is written."""

import json
import subprocess
import sys

import pytest

from conftest import TINY

RUN = ["pretrain", "--method", "rotation", *TINY, "--epochs", "2"]
TRACKER_MODULES = ("tensorboard", "wandb", "mlflow", "onnx", "onnxruntime")


def test_a_missing_tracker_is_refused_naming_its_extra(cli, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    r = cli(*RUN, "--set", "train.loggers=[jsonl,wandb]", "--out", tmp_path / "run")
    assert r.code == 2
    assert r.err.strip().splitlines()[-1].startswith("error: train.loggers names 'wandb'")
    assert 'pip install "sslcli[wandb]"' in r.err
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_refused(cli, tmp_path):
    r = cli(*RUN, "--set", "train.loggers=[tensorbord]", "--out", tmp_path / "run")
    assert r.code == 2 and "train.loggers" in r.err and "tensorboard" in r.err


@pytest.mark.slow
def test_a_run_without_trackers_imports_none_of_them(tmp_path):
    code = ("import sys\nfrom sslcli.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"print([m for m in {TRACKER_MODULES!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code, *RUN, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_tensorboard_event_files_hold_the_run(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # colourisation, for a run that draws visual.png as well as curves.png
    run = [a if a != "rotation" else "colorization" for a in RUN]
    r = cli(*run, "--set", "train.loggers=[tensorboard]", "--set", "train.log_every=1", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # 96 images, batch 32, 2 epochs
    assert [e.step for e in events.Scalars("epoch/loss")] == [3, 6]
    assert {"train/lr", "train/images_per_s", "epoch/epoch_seconds"} <= set(tags["scalars"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [m for m in metrics if "epoch_seconds" in m][-1]
    assert events.Scalars("epoch/loss")[-1].value == pytest.approx(last_epoch["loss"], abs=1e-5)
    assert {"curves", "visual"} <= set(tags["images"])
    assert "recipe" in "".join(tags["tensors"])


def test_wandb_writes_an_offline_run(cli, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(key, value)
    r = cli(*RUN, "--set", "train.loggers=[wandb]", "--set", "train.log_every=1", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")  # the run's records, protobuf messages in W&B's log format
    records = log.read_bytes()
    assert records.startswith(b":W&B")
    for key in (b"train/loss", b"train/lr", b"epoch/loss", b"epoch/epoch_seconds", b"optim", b"rotation"):
        assert key in records, key
    assert list((runs[0] / "files" / "media" / "images").glob("curves_*.png"))


def test_mlflow_writes_a_run_to_a_local_store(cli, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    r = cli(*RUN, "--set", "train.loggers=[mlflow]", "--set", "train.project=tracking-test", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracking-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["method.name"] == "rotation" and run.data.params["train.batch_size"] == "32"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/loss")] == [3, 6]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"curves.png"}  # rotation draws no visual.png
