"""The `jaxcerv` command from a folder outside the repository: train, export and predict with
built-in config names, one flag style, quiet dataset builds, and clear exits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from jaxcerv import configs
from jaxcerv.inference import served

NOISE = ("Downloading and preparing", "Using custom data configuration", "has no dataset_info")


def _jaxcerv(cwd, *args, ok=True):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-m", "jaxcerv.cli.app", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    if ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_resolve_takes_builtin_names_and_keeps_paths(tmp_path, monkeypatch):
    assert {"default", "paper", "smoke", "iarc_atlas"} <= set(configs.builtin_names())
    smoke = configs.resolve("smoke")
    assert os.path.isfile(smoke)
    assert smoke == os.path.join(os.path.dirname(configs.__file__), "smoke.py")
    assert configs.resolve("paper:arg") == configs.resolve("paper") + ":arg"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("")  # an existing file wins over a built-in name
    assert configs.resolve("smoke") == "smoke"
    assert configs.resolve("nope.py") == "nope.py"  # left for ml_collections to report
    assert configs.resolve_args(["--config", "paper", "--config=smoke", "--config.seed=1"]) == [
        "--config", configs.resolve("paper"), "--config=smoke", "--config.seed=1"
    ]


@pytest.mark.slow
def test_train_export_predict_from_another_folder(tmp_path):
    work = tmp_path / "run"
    train = _jaxcerv(tmp_path, "train", "--config=smoke", f"--workdir={work}",
                     "--config.train.epochs=1")
    assert "epoch 1:" in train.stdout
    assert not any(n in train.stdout + train.stderr for n in NOISE)
    assert json.loads((work / "config.json").read_text())["train"]["epochs"] == 1

    model = tmp_path / "model.jaxexport"
    _jaxcerv(tmp_path, "export", f"--workdir={work}", f"--out={model}")
    assert json.loads((tmp_path / "model.jaxexport.json").read_text())["image_size"] == 112

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), np.uint8)).save(photo)
    out = _jaxcerv(tmp_path, "predict", f"--model={model}", f"--out={tmp_path / 'p'}", photo)
    (result,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert result["image"] == str(photo) and result["warning"] == served.SYNTHETIC_WARNING
    assert out.stderr.count(served.SYNTHETIC_WARNING) == 1
    assert os.path.isfile(result["heatmap"])


def test_data_build_is_quiet_and_reuses_the_build(tmp_path):
    args = ("data", "build", "--config=smoke", f"--data_dir={tmp_path / 'tfds'}",
            "--config.data.num_images=12")
    first, second = _jaxcerv(tmp_path, *args), _jaxcerv(tmp_path, *args)
    assert first.stdout.startswith("building synthetic_cervix/")
    assert "12 images" in first.stdout and "12 images" in second.stdout
    assert "building" not in second.stdout
    for out in (first, second):
        assert not any(n in out.stdout + out.stderr for n in NOISE), out.stdout + out.stderr


def test_data_build_passes_the_annocerv_settings(tmp_path):
    """--config=annocerv with its folder overridden: the builder training would open, with the
    Swede threshold from the config (the summary names it) and the mask counts."""
    folder = tmp_path / "outlined"
    (folder / "m").mkdir(parents=True)
    strokes = np.zeros((32, 32), np.uint8)
    strokes[8, 8:24] = strokes[23, 8:24] = strokes[8:24, 8] = strokes[8:24, 23] = 255
    Image.fromarray(strokes).save(folder / "m" / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "m" / "b.png")
    rows = ["image,mask,case_id,swede_score"]
    for name, case, score in (("a", "1", 7), ("b", "2", 4)):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / f"{name}.png")
        rows.append(f"{name}.png,m/{name}.png,{case},{score}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    out = _jaxcerv(tmp_path, "data", "build", "--config=annocerv",
                   f"--data_dir={tmp_path / 'tfds'}", f"--config.data.manual_dir={folder}",
                   "--config.data.swede_threshold=6", "--config.grid_size=2")
    assert out.stdout.startswith("building annocerv/s56_p28_pad_sw6_aspect_csv")
    note = "Swede score >= 6: an expert's visual score, not histology"
    assert f"per label (1 = {note}): 0: 1, 1: 1" in out.stdout
    assert "masks: 1 closed into a region, 1 empty" in out.stdout
    assert "no original_width/original_height columns" in out.stdout


def test_help_lists_the_subcommands_own_flags(tmp_path):
    out = _jaxcerv(tmp_path, "export", "--help")
    flags = [line.split(":")[0].strip() for line in out.stdout.splitlines()
             if line.startswith("  --")]
    assert flags == ["--checkpoint", "--out", "--workdir"]
    overview = _jaxcerv(tmp_path, "--help")
    assert all(c in overview.stdout for c in ("train", "predict", "export", "smoke"))
    assert _jaxcerv(tmp_path, ok=False).returncode == 2  # no subcommand: usage


@pytest.mark.parametrize(
    "args, message",
    [
        (("frobnicate",), "unknown subcommand 'frobnicate'"),
        (("predict", "x.jpg"), "pass --workdir, --checkpoint or --model"),
        (("export", "--workdir=/nonexistent", "--out=m.jaxexport"), "no config.json"),
    ],
)
def test_bad_usage_exits_with_one_clear_line(tmp_path, args, message):
    out = _jaxcerv(tmp_path, *args, ok=False)
    assert out.returncode == 2 and message in out.stderr
    assert "Traceback" not in out.stderr


# Each subcommand with a required flag or argument missing (or a bad one): README's usage exit 2.
USAGE_ERRORS = {
    "train": ("--config.train.lr=1", "config.train.lr is not a setting"),
    "pretrain": ("stray", "unexpected arguments: stray"),
    "predict": ("--workdir=W", "pass --workdir, --checkpoint or --model, then IMAGE"),
    "report": ("--gallery=2", "--workdir must have a value"),
    "data": ("--data_dir=D", "usage: jaxcerv data build"),
    "export": ("--workdir=W", "--out must have a value"),
    "experiments": ("--suite=table9", "--suite=table9"),
    "handcrafted": ("--nope=1", "Unknown command line flag 'nope'"),
}


@pytest.mark.parametrize("command", sorted(USAGE_ERRORS))
def test_every_subcommands_usage_error_exits_2_in_one_line(tmp_path, command):
    flag, message = USAGE_ERRORS[command]
    out = _jaxcerv(tmp_path, command, flag, ok=False)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "W").exists() and not (tmp_path / "D").exists()


@pytest.mark.parametrize("command", sorted([*USAGE_ERRORS, "bench"]))
def test_every_subcommands_help_exits_0(tmp_path, command):
    out = _jaxcerv(tmp_path, command, "--help", ok=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"jaxcerv {command}" in out.stdout


def test_bench_runs_the_checkouts_benchmark(tmp_path):
    out = _jaxcerv(tmp_path, "bench", "--config=smoke", "--batch=2", "--repeats=1", "--steps=1",
                   "--warmup=0", "--what=infer", "--nopredict", "--out=", "--impls=s2d", "--json")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["infer_img_per_s"] > 0 and row["batch"] == 2


def test_bench_without_a_checkout_is_one_line(monkeypatch, capsys, tmp_path):
    from jaxcerv.cli import bench
    monkeypatch.setattr(bench, "SCRIPT", tmp_path / "absent.py")
    assert bench.main(["jaxcerv bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the source checkout" in err
