"""``jaxcerv train`` faults at the command level: Ctrl-C is one line and exit 130, and the rerun
resumes to the uninterrupted result; a run that fails on bad data leaves its fresh workdir as it
found it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from PIL import Image
from test_lifecycle import REPO, _assert_same, _env, _outcome, reference  # noqa: F401

from jaxcerv.training import train


def _command(workdir, tfds, *flags):
    return [sys.executable, "-m", "jaxcerv.main", "--config=configs/smoke.py",
            f"--workdir={workdir}", f"--config.data.data_dir={tfds}",
            "--config.train.epochs=3", "--config.train.patience=10", *flags]


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes_bit_identically(reference):  # noqa: F811
    tmp, expected = reference
    workdir, tfds = tmp / "sigint", tmp / "tfds"
    proc = subprocess.Popen(_command(workdir, tfds), cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # mid-run: epoch 2 is logged (epoch 1 saved), epoch 3 on its way
        if line.startswith("epoch 2:"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and re.fullmatch(
        r"interrupted at epoch [23], rerun the same command to resume", lines[0]), err[-3000:]
    assert not (workdir / "results.json").exists()
    rerun = subprocess.run(_command(workdir, tfds), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming from epoch" in rerun.stdout
    _assert_same(expected, _outcome(workdir))


def test_interrupt_names_the_epoch_and_fold(monkeypatch, tmp_path):
    """In process: a KeyboardInterrupt in epoch 1 becomes Interrupted('epoch 1'); the lock is
    released, so the rerun is not refused."""
    from configs import smoke

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_train_epoch", interrupt)
    config = smoke.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    try:
        train.train_and_evaluate(config, str(tmp_path / "w"))
    except train.Interrupted as e:
        assert e.where == "epoch 1"
    else:
        raise AssertionError("no Interrupted")
    assert not (tmp_path / "w" / "lock").exists()


def test_a_run_that_fails_on_bad_data_leaves_nothing_behind(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = ["image,session,label"]
    for k in range(6):
        (photos / f"{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
        rows.append(f"{k}.png,s{k},{k % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "unused.png")  # not listed: never read
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcerv.main", "--config=configs/smoke.py", f"--workdir={workdir}",
         "--config.data.name=cervix_folder", f"--config.data.manual_dir={photos}",
         f"--config.data.csv={tmp_path / 'labels.csv'}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "no usable images" in line or "labels.csv" in line, line
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))
