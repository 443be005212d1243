"""``jaxcerv predict`` on a run folder it cannot write to: the score stays in the JSON line, the
heatmap error stands beside it with the ``--out`` hint, and ``--out`` puts the heatmap elsewhere.

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
