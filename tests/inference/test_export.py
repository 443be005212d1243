"""An exported smoke run scores images as its checkpoint does, loads without flax/orbax, and
carries its provenance; the subprocess checks what the loader imports."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from jaxcerv.inference import export, served
from jaxcerv.inference.predict import Predictor, best_checkpoint_dir
from jaxcerv.runtime.rundir import RunDir


@pytest.fixture(scope="module")
def exported(smoke_workdir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model.jaxexport")
    return path, export.export_run(smoke_workdir, path)


@pytest.mark.parametrize("batch", [1, 3])
def test_exported_predictions_match_the_checkpoint(smoke_workdir, exported, batch):
    predictor = Predictor.from_run(smoke_workdir)
    side = predictor.image_size
    images = np.random.default_rng(batch).integers(0, 256, (batch, side, side, 3), np.uint8)
    probs, weights = served.ServedModel(exported[0])(images)  # one file, any batch size
    reference = predictor.predict_arrays(images)
    assert probs.shape == (batch,) and weights.shape == (batch, 4, 4)
    np.testing.assert_allclose(probs, reference["probabilities"], atol=1e-5)
    np.testing.assert_allclose(weights, reference["weights"], atol=1e-5)


def test_sidecar_says_what_the_model_expects_and_where_it_came_from(smoke_workdir, exported):
    meta = json.loads(open(exported[0] + ".json").read())
    config = RunDir(smoke_workdir).read_config()
    results = json.loads(open(os.path.join(smoke_workdir, "results.json")).read())
    assert meta == exported[1]
    assert meta["image_size"] == config.grid_size * config.patch_size == 112
    assert (meta["grid_size"], meta["patch_size"]) == (config.grid_size, config.patch_size)
    assert meta["resize"] == config.data.resize
    assert meta["threshold"] == results["threshold"]
    assert meta["test_metrics"] == results["test"]
    assert meta["dataset"] == "synthetic_cervix" and meta["trained_on_synthetic_data"] is True
    assert meta["best_epoch"] == results["best_epoch"]
    assert meta["source"] == os.path.abspath(best_checkpoint_dir(smoke_workdir))
    assert meta["config_digest"] == served.config_digest(config)
    config.train.epochs += 1  # any change moves the digest
    assert meta["config_digest"] != served.config_digest(config)


def test_wrong_input_and_bad_files_give_one_line(exported, tmp_path):
    model = served.ServedModel(exported[0])
    with pytest.raises(served.ExportError, match=r"uint8 \(B, 112, 112, 3\)"):
        model(np.zeros((1, 64, 64, 3), np.uint8))
    broken = tmp_path / "broken.jaxexport"
    broken.write_bytes(b"not a model")
    meta = json.loads(open(exported[0] + ".json").read())
    (tmp_path / "broken.jaxexport.json").write_text(json.dumps(
        {**meta, "sha256": hashlib.sha256(b"not a model").hexdigest()}))
    with pytest.raises(served.ExportError, match="not a jax.export file"):
        served.ServedModel(str(broken))
    with pytest.raises(served.ExportError, match="not found"):
        served.ServedModel(str(tmp_path / "missing.jaxexport"))


_SERVE = """
import json, sys
from jaxcerv.inference import served
results = served.predict_files(sys.argv[1], sys.argv[2:], sys.argv[1] + ".out")
heavy = ("flax", "orbax", "optax", "grain", "tensorflow_datasets", "jaxcerv.model.networks",
             "jaxcerv.training.train")
loaded = sorted({m.split(".")[0] if not m.startswith("jaxcerv") else m for m in sys.modules
                 if any(m == h or m.startswith(h + ".") for h in heavy)})
print(json.dumps({"results": results, "loaded": loaded}))
"""


def test_served_predict_needs_only_jax_and_numpy(smoke_workdir, exported, tmp_path):
    photo = tmp_path / "wide photo.png"  # 300 x 120: the heatmap keeps this aspect
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 300, 3), np.uint8)).save(photo)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", _SERVE, exported[0], str(photo), str(tmp_path / "missing.png")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["loaded"] == []
    good, bad = report["results"]
    assert "error" in bad and "missing.png" in bad["error"]
    reference = Predictor.from_run(smoke_workdir)
    expected = float(reference.predict_arrays(reference.load(str(photo))[None])["probabilities"][0])
    assert good["probability"] == pytest.approx(expected, abs=1e-5)
    assert good["label"] == int(expected >= good["threshold"])
    assert good["class"] == ("CIN2+" if good["label"] else "normal or CIN1")
    assert good["model"]["dataset"] == "synthetic_cervix"
    assert good["model"]["config_digest"] == exported[1]["config_digest"]
    assert good["warning"] == served.SYNTHETIC_WARNING
    assert out.stderr.count(served.SYNTHETIC_WARNING) == 1  # said once, not per image
    with Image.open(good["heatmap"]) as im:
        assert im.format == "PNG"


def test_whole_image_model_exports_and_predicts_without_a_heatmap(tmp_path):
    """A baseline without patch weights (LeNet): the exported function gives weights (B, 0, 0)
    next to the same probabilities as the model, and predict draws the photograph with no
    heatmap instead of failing."""
    import jax

    from configs import smoke
    from jaxcerv.model import networks as model_lib
    config = smoke.get_config()
    config.model.family, config.regulator.mode = "lenet", "none"
    model = model_lib.from_config(config)
    side = config.grid_size * config.patch_size
    images = np.random.default_rng(0).integers(0, 256, (3, side, side, 3), np.uint8)
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    probs, weights = export.export_model(config, params).call(images)
    direct = 1 / (1 + np.exp(-np.asarray(model.apply({"params": params}, images).logits,
                                         np.float64)))
    np.testing.assert_allclose(np.asarray(probs), direct, rtol=1e-5)
    assert weights.shape == (3, 0, 0)

    path = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(path)
    card = {"threshold": 0.5, "image_size": side, "patch_size": config.patch_size,
            "resize": config.data.resize, "dataset": "synthetic_cervix", "config_digest": "x"}
    forwards = [  # the exported function's output, and the checkpoint Predictor's (no key)
        lambda x: {"probabilities": np.full(len(x), 0.7), "weights": np.zeros((len(x), 0, 0))},
        lambda x: {"probabilities": np.full(len(x), 0.7)},
    ]
    for k, forward in enumerate(forwards):
        (result,) = served.predict_images(forward, card, [str(path)], str(tmp_path / f"o{k}"))
        assert "error" not in result and result["label"] == 1
        assert os.path.getsize(result["heatmap"]) > 0


def _copy(exported, tmp_path):
    model = tmp_path / "copy.jaxexport"
    model.write_bytes(open(exported[0], "rb").read())
    (tmp_path / "copy.jaxexport.json").write_text(open(exported[0] + ".json").read())
    return model


def test_the_export_carries_its_sha256_and_a_damaged_file_is_refused(exported, tmp_path):
    blob = open(exported[0], "rb").read()
    assert exported[1]["sha256"] == hashlib.sha256(blob).hexdigest()
    model = _copy(exported, tmp_path)
    served.ServedModel(str(model))  # intact: loads
    damaged = bytearray(blob)
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(b ^ 0xFF for b in damaged[middle : middle + 64])
    model.write_bytes(bytes(damaged))
    with pytest.raises(served.ExportError) as e:
        served.ServedModel(str(model))
    (line,) = str(e.value).splitlines()
    assert f"{model} does not match the sha256 in {model}.json" in line


@pytest.mark.parametrize("sidecar", ['{"format": "jaxcerv.jaxexport/1", "threshold": 0.5,,}',
                                     b"\xff\xfe{", "[1, 2]"])
def test_a_broken_sidecar_names_its_file(exported, tmp_path, sidecar):
    model = _copy(exported, tmp_path)
    meta = tmp_path / "copy.jaxexport.json"
    meta.write_bytes(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    with pytest.raises(served.ExportError) as e:
        served.ServedModel(str(model))
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"{meta}: ")


def test_unicode_paths_are_read_and_their_heatmaps_written(tmp_path):
    """A photograph in a folder and under a name outside ASCII (an accent, CJK, Cyrillic)."""
    folder = tmp_path / "Ärztin 日本"
    folder.mkdir()
    photo = folder / "фото 1.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(photo)
    card = {"threshold": 0.5, "image_size": 32, "patch_size": 8, "resize": "stretch",
            "dataset": "cervix_folder", "config_digest": "x"}
    forward = lambda x: {"probabilities": np.full(len(x), 0.7),  # noqa: E731
                         "weights": np.ones((len(x), 4, 4))}
    (result,) = served.predict_images(forward, card, [str(photo)], str(folder / "out 出力"))
    assert "error" not in result, result
    assert result["image"] == str(photo)
    assert os.path.basename(result["heatmap"]) == "фото 1.heatmap.png"
    with Image.open(result["heatmap"]) as im:
        assert im.format == "PNG"
