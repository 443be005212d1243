"""Predict on a smoke run: a non-square JPEG, a PNG and a corrupt file (error line, others fine);
a dataset image saved losslessly gets the probability evaluation saved for it."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxcerv.inference import predict, served
from jaxcerv.runtime.rundir import RunDir


@pytest.fixture(scope="module")
def predictions(smoke_workdir, predict_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return predict.predict_run(predict_inputs[0], str(out), workdir=smoke_workdir), str(out)


def test_good_images_get_probability_heatmap_and_regulator(predictions, predict_inputs,
                                                            smoke_workdir):
    results, out = predictions
    with open(os.path.join(smoke_workdir, "results.json")) as f:
        threshold = json.load(f)["threshold"]
    config = RunDir(smoke_workdir).read_config()
    paths = predict_inputs[0]
    for r, path in zip([results[0], results[2]], [paths[0], paths[2]], strict=True):
        assert set(r) == {"image", "probability", "label", "class", "threshold", "heatmap",
                          "regulator", "model", "warning"}
        assert r["image"] == path
        assert 0.0 <= r["probability"] <= 1.0
        assert r["threshold"] == threshold
        assert r["label"] == int(r["probability"] >= threshold)
        assert os.path.dirname(r["heatmap"]) == out
        with Image.open(r["heatmap"]) as im:
            assert im.format == "PNG"  # the clinician figure: tests/test_viz.py
        assert len(r["regulator"]) == 5 and np.all(np.isfinite(r["regulator"]))
        assert r["class"] == served.CLASS_NAMES[r["label"]]
        assert r["model"]["dataset"] == "synthetic_cervix"
        assert r["model"]["config_digest"] == served.config_digest(config)
        assert r["model"]["source"] == os.path.abspath(predict.best_checkpoint_dir(smoke_workdir))
        assert r["warning"] == served.SYNTHETIC_WARNING  # the smoke model saw synthetic data only
    json.dumps(results, allow_nan=False)  # every line is strict JSON


def test_corrupt_file_gets_an_error_line(predictions, predict_inputs):
    bad = predictions[0][1]
    assert set(bad) == {"image", "error"}
    assert bad["image"] == predict_inputs[0][1]
    assert predict_inputs[0][1] in bad["error"] and "\n" not in bad["error"]


def test_dataset_image_matches_saved_evaluation(predictions, predict_inputs):
    _, saved = predict_inputs
    r = predictions[0][2]
    assert r["probability"] == pytest.approx(float(saved["probabilities"]), abs=1e-5)
    np.testing.assert_allclose(r["regulator"], saved["regulators"], atol=1e-4)


def test_partial_batch_pads_to_next_power_of_two():
    assert [predict.padded_batch(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert predict.padded_batch(5, 6) == 6  # never above the configured batch


def test_scores_do_not_depend_on_the_padded_batch(smoke_workdir):
    """Three images in one padded batch of 4 score as each alone (batch 1) does."""
    predictor = predict.Predictor.from_run(smoke_workdir)
    side = predictor.image_size
    images = np.random.default_rng(3).integers(0, 256, (3, side, side, 3), dtype=np.uint8)
    together = predictor.predict_arrays(images)
    for i in range(3):
        alone = predictor.predict_arrays(images[i : i + 1])
        for k in ("probabilities", "weights", "regulators"):
            np.testing.assert_allclose(alone[k][0], together[k][i], rtol=1e-5, atol=1e-6)


def test_save_weights_writes_the_grid_the_heatmap_draws(tmp_path, monkeypatch):
    """A 256 x 128 photograph letterboxed onto a 4 x 4 grid of 16 px patches, whose weights peak
    in the top-right patch: the .npy is the model's grid as is (row 0 at the top), and mapping
    every photograph pixel through ``grid_box`` onto it gives the heatmap predict draws, pixel for
    pixel (the sizes divide exactly, so nearest resizing has no rounding to forgive)."""
    from jaxcerv.reporting import viz

    weights = np.arange(16, dtype=np.float32).reshape(4, 4)[::-1] / 16  # max at row 0, col 3
    drawn = []
    figure = viz.clinician_figure

    def spy(photo, heat, *args, **kwargs):
        drawn.append(heat)
        return figure(photo, heat, *args, **kwargs)

    monkeypatch.setattr(viz, "clinician_figure", spy)
    photo = tmp_path / "wide.png"
    Image.fromarray(np.full((128, 256, 3), 90, np.uint8)).save(photo)
    card = {"threshold": 0.5, "image_size": 64, "patch_size": 16, "resize": "pad",
            "dataset": "synthetic_cervix", "config_digest": "x"}

    def forward(x):
        return {"probabilities": np.full(len(x), 0.3), "weights": np.tile(weights, (len(x), 1, 1))}

    (r,) = served.predict_images(forward, card, [str(photo)], str(tmp_path / "o"),
                                 save_weights=True)
    assert r["weights_file"] == str(tmp_path / "o" / "wide.weights.npy")
    saved = np.load(r["weights_file"])
    assert saved.dtype == np.float32 and saved.shape == (4, 4) and r["grid"] == [4, 4]
    np.testing.assert_array_equal(saved, weights)
    assert np.unravel_index(np.argmax(saved), saved.shape) == (0, 3)  # top right
    assert r["photo_size"] == [256, 128]
    # Letterbox: 256 x 128 -> 64 x 32 at y0 = 16: the grid overhangs by 16 input = 64 photo px.
    assert r["grid_box"] == [0.0, -64.0, 256.0, 192.0]
    left, top, right, bottom = r["grid_box"]
    ys, xs = np.mgrid[0:128, 0:256] + 0.5
    rows = np.floor((ys - top) / (bottom - top) * 4).astype(int)
    cols = np.floor((xs - left) / (right - left) * 4).astype(int)
    (heat,) = drawn
    assert heat.shape == (128, 256)
    np.testing.assert_array_equal(saved[rows, cols], heat)


def test_grid_box_maps_the_grid_onto_a_non_square_photograph():
    """Hand-computed letterboxes (data.images.letterbox_box): 300 x 200 into 112 px is 112 x 75
    at y0 = 18; 100 x 250 into 64 px is 26 x 64 at x0 = 19. The letterbox's edges map onto the
    photograph's edges; "stretch" is the photograph itself."""
    assert served.grid_box(300, 200, 112, "stretch") == [0.0, 0.0, 300.0, 200.0]
    np.testing.assert_allclose(served.grid_box(300, 200, 112, "pad"),
                               [0.0, -48.0, 300.0, 94 * 200 / 75])
    left, top, right, bottom = served.grid_box(100, 250, 64, "pad")
    np.testing.assert_allclose([left, top, right, bottom],
                               [-19 * 100 / 26, 0.0, 45 * 100 / 26, 250.0])
    sx = (right - left) / 64  # photograph pixels per input pixel
    np.testing.assert_allclose([left + 19 * sx, left + (19 + 26) * sx], [0.0, 100.0], atol=1e-9)


def test_save_weights_from_a_run_and_an_export(smoke_workdir, predict_inputs, tmp_path):
    """save_weights on the smoke run (and on its export): the .npy is the
    model's weight grid for that file, beside its heatmap; the corrupt file still gets one line."""
    from jaxcerv.inference import export

    paths = predict_inputs[0]
    predictor = predict.Predictor.from_run(smoke_workdir)
    expected = predictor.predict_arrays(predictor.load(paths[0])[None])["weights"][0]
    model = str(tmp_path / "model.jaxexport")
    export.export_run(smoke_workdir, model)
    for out in ("run", "export"):
        if out == "export":
            results = served.predict_files(model, paths, str(tmp_path / out), save_weights=True)
        else:
            results = predict.predict_run(paths, str(tmp_path / out), workdir=smoke_workdir,
                                          save_weights=True)
        good, bad = results[0], results[1]
        assert set(bad) == {"image", "error"}
        assert good["weights_file"] == str(tmp_path / out / "wide.weights.npy")
        assert good["heatmap"] == str(tmp_path / out / "wide.heatmap.png")
        assert good["grid"] == [4, 4] and good["photo_size"] == [300, 200]
        assert good["grid_box"] == [0.0, 0.0, 300.0, 200.0]  # the smoke config stretches
        np.testing.assert_allclose(np.load(good["weights_file"]), expected, atol=1e-5)
        json.dumps(results, allow_nan=False)


def _spread_run(smoke_workdir, folder, images, threshold) -> list[float]:
    """A copy of the smoke run whose best checkpoint's last layer is stretched (its logits on
    ``images``: centred on 0, 15x apart), with ``threshold`` as the one chosen on validation;
    returns the probabilities it gives ``images``."""
    import shutil

    import jax.numpy as jnp

    from jaxcerv.training import checkpointing, steps

    shutil.copytree(smoke_workdir, folder, ignore=shutil.ignore_patterns("tfds", "predictions"))
    run = RunDir(str(folder))
    results = run.read_results()
    results["threshold"] = threshold
    (folder / "results.json").write_text(json.dumps(results))
    predictor = predict.Predictor.from_run(str(folder))
    p = predictor.predict_arrays(images)["probabilities"].astype(np.float64)
    centre = float(np.median(np.log(p / (1 - p))))
    params = _copy_tree(predictor.params)
    last = params["classifier"]["Dense_2"]
    last["kernel"], last["bias"] = 15.0 * last["kernel"], 15.0 * (last["bias"] - centre)
    best = results["best_epoch"]
    meta = json.loads(open(f"{run.checkpoint_dir('best', best)}/meta/metadata").read())
    ckpt = checkpointing.Checkpoints(run)
    ckpt.managers["best"].delete(best)
    ckpt.save("best", best, steps.TrainState(step=jnp.asarray(0), params=params,
                                             opt_state={"none": jnp.zeros(1)},
                                             rng=jnp.zeros(2, jnp.uint32),
                                             regulators=jnp.zeros((1, 5)),
                                             regulator_agree=jnp.zeros((1,), jnp.int32),
                                             ema_params=params), meta)
    ckpt.close()
    return predict.Predictor.from_run(str(folder)).predict_arrays(images)["probabilities"]


def _copy_tree(tree):
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def test_served_labels_use_the_validation_threshold_not_one_half(smoke_workdir, tmp_path):
    """A threshold far from 0.5 and probabilities on both sides of both cuts: the label of an
    image between 0.5 and the threshold tells a fixed 0.5 cut from the run's, for a run folder
    (predict --workdir) and for its export (predict --model)."""
    from jaxcerv.inference import export

    threshold = 0.85
    rng = np.random.default_rng(0)
    images = np.stack([np.clip(rng.normal(v, 40, (112, 112, 3)), 0, 255).astype(np.uint8)
                       for v in np.linspace(20, 235, 16)])
    probs = _spread_run(smoke_workdir, tmp_path / "run", images, threshold)
    assert min(probs) < 0.5 and max(probs) >= threshold
    assert np.any((probs >= 0.5) & (probs < threshold))  # where the two cuts disagree
    paths = []
    for k, im in enumerate(images):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(im).save(paths[-1])  # lossless, already the model's size
    model = str(tmp_path / "model.jaxexport")
    export.export_run(str(tmp_path / "run"), model)
    for results in (predict.predict_run(paths, str(tmp_path / "a"), workdir=str(tmp_path / "run")),
                    served.predict_files(model, paths, str(tmp_path / "b"))):
        got = [(r["probability"], r["label"], r["threshold"]) for r in results]
        np.testing.assert_allclose([g[0] for g in got], probs, atol=1e-5)
        assert [g[1] for g in got] == [int(p >= threshold) for p in probs]
        assert {g[2] for g in got} == {threshold}
