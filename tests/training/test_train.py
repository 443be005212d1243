"""The loop's protocol on a finished smoke run, each against an independent oracle: the selected
epoch follows a hand-written rule, the tested predictions come from that epoch's checkpoint, and
the threshold comes from the validation predictions alone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxcerv.training.train import Selection


def _hand_rule(history: list[tuple[float, float]]) -> int:
    """The epoch (1-based) with the highest AUC; among equal AUCs the lowest loss; first wins."""
    best = 0
    for e, (auc, loss) in enumerate(history):
        b_auc, b_loss = history[best]
        if auc > b_auc or (auc == b_auc and loss < b_loss):
            best = e
    return best + 1


@pytest.mark.parametrize("seed", range(5))
def test_selection_matches_the_hand_written_rule(seed):
    rng = np.random.default_rng(seed)
    history = [(float(rng.choice([0.5, 0.75, 0.9])), float(rng.uniform(0.3, 0.7)))
               for _ in range(12)]
    selection = Selection()
    for epoch, (auc, loss) in enumerate(history, start=1):
        selection.update(epoch, auc, loss)
    assert selection.best_epoch == _hand_rule(history)


def test_patience_counts_epochs_since_the_best():
    selection = Selection()
    flags = [selection.update(e, auc, 0.5) for e, auc in enumerate([0.6, 0.7, 0.7, 0.65], 1)]
    assert flags == [True, True, False, False] and selection.bad_epochs == 2


def _npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _test_images(config, workdir: str, ids) -> np.ndarray:
    """The run's test images with these ids, read from its dataset."""
    from jaxcerv.data import pipeline

    source, records = pipeline.load(config, workdir)
    index = {str(i): k for k, i in enumerate(records.ids)}
    return np.stack([np.asarray(source[index[str(i)]]["image"]) for i in ids])


@pytest.fixture(scope="module")
def earlier_best_workdir(smoke_workdir, tmp_path_factory) -> str:
    """A smoke run whose selected epoch is not its last (at lr 1e-3 its validation AUC falls
    from 0.875 to 0.812 in epoch 2), so that testing the last checkpoint instead of the selected
    one shows; the shared smoke run now improves in both epochs. Its data is the smoke run's."""
    from configs import smoke
    from jaxcerv.training import train

    config = smoke.get_config()
    config.train.learning_rate = 1e-3
    config.data.data_dir = os.path.join(smoke_workdir, "tfds")
    workdir = str(tmp_path_factory.mktemp("earlier_best"))
    train.train_and_evaluate(config, workdir)
    return workdir


def test_run_tests_the_selected_checkpoint_with_a_validation_threshold(earlier_best_workdir):
    from sklearn.metrics import roc_curve

    from jaxcerv.model import networks as model_lib
    from jaxcerv.runtime.rundir import RunDir
    from jaxcerv.training import checkpointing, steps

    run = RunDir(earlier_best_workdir)
    results = json.load(open(run.results))
    rows = run.read_metrics()
    assert results["best_epoch"] == _hand_rule([(r["val_roc_auc"], r["val_loss"]) for r in rows])
    # The run selects an earlier epoch than its last: testing the last instead shows here.
    assert results["best_epoch"] < results["epochs_run"]

    # The saved test predictions are those of checkpoints/best/<best_epoch>, recomputed here.
    config = run.read_config()
    model = model_lib.from_config(config)
    params = checkpointing.restore_params(
        run.checkpoint_dir("best", results["best_epoch"]), steps.abstract_params(config, model),
        steps.served_params_key(config),
    )
    test = _npz(run.eval_npz("test"))
    images = _test_images(config, earlier_best_workdir, test["ids"])
    out = steps.jit_eval_step(config, model)(params, {"image": images})
    np.testing.assert_allclose(np.asarray(out["probabilities"]), test["probabilities"],
                               rtol=1e-5, atol=1e-6)

    # Threshold: Youden's J on the validation predictions (sklearn's ROC as the oracle).
    val = _npz(run.eval_npz("val"))
    fpr, tpr, cuts = roc_curve(val["labels"], val["probabilities"])
    cut = cuts[np.argmax(tpr - fpr)]
    assert np.sum(val["probabilities"] >= results["threshold"]) == np.sum(
        val["probabilities"] >= cut
    )
    assert os.path.isfile(run.train_ids)


def test_device_resident_training_matches_the_host_pipeline(smoke_workdir, tmp_path):
    """config.data.resident gathers the same batches on the device: the same run, metric for
    metric, and the same tested predictions."""
    from configs import smoke
    from jaxcerv.training import train
    config = smoke.get_config()
    config.data.resident = True
    config.data.data_dir = os.path.join(smoke_workdir, "tfds")
    train.train_and_evaluate(config, str(tmp_path))

    def rows(workdir):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k.startswith(("train_", "val_"))}
                    for line in f]

    host, dev = rows(smoke_workdir), rows(str(tmp_path))
    assert len(host) == len(dev) > 0
    for h, d in zip(host, dev, strict=True):
        assert h.keys() == d.keys()
        np.testing.assert_allclose([d[k] for k in h], [h[k] for k in h], rtol=1e-6)
    with np.load(os.path.join(smoke_workdir, "eval", "test.npz")) as a, \
            np.load(os.path.join(tmp_path, "eval", "test.npz")) as b:
        np.testing.assert_allclose(b["probabilities"], a["probabilities"], rtol=1e-6)


def test_a_run_folder_never_mixes_two_configs(smoke_workdir, tmp_path, capsys):
    """A rerun that changes the grid is refused before anything is touched, naming the key; one
    that adds epochs continues the run (said in one line); train.restart starts over."""
    import shutil

    from configs import smoke
    from jaxcerv.runtime.rundir import RunDir, RunError
    from jaxcerv.training import train

    workdir = tmp_path / "run"
    shutil.copytree(smoke_workdir, workdir, ignore=shutil.ignore_patterns("tfds"))
    run = RunDir(str(workdir))
    before = {p: (workdir / p).read_bytes() for p in ("config.json", "results.json")}

    def config(**train_settings):
        c = smoke.get_config()
        c.data.data_dir = os.path.join(smoke_workdir, "tfds")  # allowed: the cache's folder
        c.train.update(train_settings)
        return c

    grid = config()
    grid.grid_size = 5
    with pytest.raises(RunError, match=r"another config \(grid_size: 4 -> 5\): use a new "
                                       r"--workdir, or add --config.train.restart=True"):
        train.train_and_evaluate(grid, str(workdir))
    assert {p: (workdir / p).read_bytes() for p in before} == before  # nothing overwritten

    capsys.readouterr()
    train.train_and_evaluate(config(epochs=3), str(workdir))
    out = capsys.readouterr().out
    assert "allowed (it extends the run): data.data_dir: '' -> " in out
    assert "train.epochs: 2 -> 3" in out and "Resuming from epoch 2" in out
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    old_digest = json.load(open(f"{run.checkpoint_dir('latest', 2)}/meta/metadata"))["digest"]

    train.train_and_evaluate(config(learning_rate=0.01, restart=True), str(workdir))
    out = capsys.readouterr().out
    assert "train.restart=True: deleted the earlier run" in out and "Resuming" not in out
    rows = run.read_metrics()
    assert [(r["epoch"], r["lr"]) for r in rows] == [(1, 0.01), (2, 0.01)]
    assert run.checkpoint_steps("latest") == [1, 2]
    new_digest = json.load(open(f"{run.checkpoint_dir('latest', 2)}/meta/metadata"))["digest"]
    assert new_digest != old_digest
    assert run.read_config().train.learning_rate == 0.01


def test_with_a_parameter_average_the_average_is_tested_and_served(smoke_workdir):
    """train.ema_epochs > 0 (the shared smoke run's, from the default): the saved test
    predictions are the selected checkpoint's average (recomputed from its ema_params), not its
    raw parameters, and predict serves the same."""
    from jaxcerv.inference.predict import Predictor
    from jaxcerv.model import networks as model_lib
    from jaxcerv.runtime.rundir import RunDir
    from jaxcerv.training import checkpointing, steps

    run = RunDir(smoke_workdir)
    config = run.read_config()
    assert config.train.ema_epochs > 0  # precondition: the run averages
    best = run.checkpoint_dir("best", json.load(open(run.results))["best_epoch"])
    model = model_lib.from_config(config)
    like = steps.abstract_params(config, model)
    test = _npz(run.eval_npz("test"))
    images = _test_images(config, smoke_workdir, test["ids"])
    forward = steps.jit_eval_step(config, model)

    def probabilities(params):
        return np.asarray(forward(params, {"image": images})["probabilities"])

    average = checkpointing.restore_params(best, like, "ema_params")
    np.testing.assert_allclose(probabilities(average), test["probabilities"], rtol=1e-5,
                               atol=1e-6)
    raw = probabilities(checkpointing.restore_params(best, like, "params"))
    assert np.abs(raw - test["probabilities"]).max() > 1e-4  # the raw model would show
    served = Predictor.from_run(smoke_workdir).predict_arrays(images)["probabilities"]
    np.testing.assert_allclose(served, test["probabilities"], rtol=1e-5, atol=1e-6)
