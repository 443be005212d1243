"""``jaxcerv predict``: one JSON line per input and the exit status; on a run folder it cannot
write to, the score stays in the JSON line, the heatmap error stands beside it with the ``--out``
hint, and ``--out`` puts the heatmap elsewhere.

Tests run as root, where chmod does not stop a write: the run's ``predictions`` folder is made
unwritable for anyone by putting a regular file where it would go."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxcerv.cli import predict as predict_command
from jaxcerv.inference import predict


@pytest.fixture
def blocked_run(smoke_workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_workdir, run, ignore=shutil.ignore_patterns("predictions"))
    (run / "predictions").write_text("a file where the heatmap folder would go")
    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)).save(image)
    return run, str(image)


def test_a_heatmap_that_cannot_be_written_keeps_the_score(blocked_run, tmp_path, capsys):
    run, image = blocked_run
    assert predict_command.run([image], workdir=str(run)) == 0  # the image was scored
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "error" not in line and "heatmap" not in line
    assert 0.0 <= line["probability"] <= 1.0 and line["label"] in (0, 1)
    assert "cannot write the heatmap" in line["heatmap_error"]
    assert str(run / "predictions") in line["heatmap_error"]
    assert line["heatmap_error"].endswith("pass --out=DIR")

    out = tmp_path / "elsewhere"
    assert predict_command.run([image], workdir=str(run), out=str(out)) == 0
    (again,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert again["probability"] == line["probability"]
    assert os.path.isfile(again["heatmap"]) and again["heatmap"].startswith(str(out))
    assert "heatmap_error" not in again


def test_only_unreadable_images_exit_1_and_a_missing_run_exits_2(blocked_run, tmp_path, capsys):
    run, _ = blocked_run
    assert predict_command.run([str(tmp_path / "missing.png")], workdir=str(run)) == 1
    assert "error" in json.loads(capsys.readouterr().out)
    assert predict_command.run(["x.png"], workdir=str(tmp_path / "nothing")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothing" in err[0]


def test_cli_prints_one_json_line_per_input_and_exit_status(
    smoke_workdir, predict_inputs, tmp_path, capsys
):
    """--checkpoint with the best step directory serves the same model as --workdir; an image
    given twice gets two heatmap files."""
    paths = predict_inputs[0]
    reference = predict.predict_run([paths[2]], str(tmp_path / "ref"), workdir=smoke_workdir)
    step = predict.best_checkpoint_dir(smoke_workdir)
    assert predict_command.run([paths[2], paths[1], paths[2]], checkpoint=step,
                               out=str(tmp_path)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in lines] == [paths[2], paths[1], paths[2]]
    assert "error" in lines[1]
    for r in (lines[0], lines[2]):
        assert r["probability"] == pytest.approx(reference[0]["probability"], rel=1e-5)
        assert os.path.isfile(r["heatmap"])
    assert lines[0]["heatmap"] != lines[2]["heatmap"]
    assert predict_command.run([paths[1], str(tmp_path / "missing.png")],
                               workdir=smoke_workdir) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in r) for r in lines] == [True, True]



def test_save_weights_writes_one_grid_per_scored_photograph(smoke_workdir, predict_inputs,
                                                           tmp_path, capsys):
    """--save_weights: each scored line names its .npy (the grid it reports) and the corrupt
    file still gets its error line and exit status 0 (some images were scored)."""
    paths = predict_inputs[0]
    assert predict_command.run(paths, workdir=smoke_workdir, out=str(tmp_path),
                               save_weights=True) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in r) for r in lines] == [False, True, False]
    for r in (lines[0], lines[2]):
        weights = np.load(r["weights_file"])
        assert weights.dtype == np.float32 and list(weights.shape) == r["grid"]
        assert os.path.dirname(r["weights_file"]) == str(tmp_path)


def test_over_long_names_get_their_own_error_and_the_rest_are_scored(
    smoke_workdir, predict_inputs, tmp_path, capsys
):
    paths, _ = predict_inputs
    long_input = str(tmp_path / ("x" * 300 + ".png"))  # cannot even be opened
    long_output = tmp_path / ("y" * 248 + ".png")  # opens, but its heatmap name is too long
    long_output.write_bytes(open(paths[2], "rb").read())
    images = [long_input, str(long_output), paths[2]]
    assert predict_command.run(images, workdir=smoke_workdir, out=str(tmp_path / "out")) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert "File name too long" in lines[0]["error"]
    assert "cannot write the heatmap" in lines[1]["heatmap_error"]
    assert "--out=DIR" in lines[1]["heatmap_error"] and "probability" in lines[1]
    assert "probability" in lines[2] and os.path.isfile(lines[2]["heatmap"])
