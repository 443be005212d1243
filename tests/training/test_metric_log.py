"""Metric writing: the TensorBoard event file holds exactly the JSONL's numbers."""

from __future__ import annotations

import struct

from jaxcerv.runtime.rundir import RunDir
from jaxcerv.training.metric_log import MetricWriter


def _read_events(path):
    """TFRecord framing read by hand (length, crc, payload, crc), payload parsed as an Event."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        data = f.read()
    pos, events = 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        payload = data[pos + 12 : pos + 12 + length]
        pos += 12 + length + 4
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
    return events


def test_scalars_match_the_jsonl(tmp_path):
    run = RunDir(str(tmp_path))
    writer = MetricWriter(run)
    rows = [{"epoch": 1, "train_loss": 0.75, "val_roc_auc": 0.5, "note": "x"},
            {"epoch": 2, "train_loss": 0.5, "val_roc_auc": float("nan")}]
    for r in rows:
        writer.write(r)
    writer.close()
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    (event_file,) = (tmp_path / "tensorboard").iterdir()
    scalars = {
        (v.tag, e.step): v.simple_value
        for e in _read_events(event_file)
        for v in e.summary.value
    }
    # Numbers only; NaN is not written (TensorBoard would draw it as a gap anyway).
    assert scalars == {("train_loss", 1): 0.75, ("val_roc_auc", 1): 0.5, ("train_loss", 2): 0.5}


def _tensorboard_view(folder):
    """Scalars as TensorBoard shows them: event files in name order, and a SessionLog START at
    step S (``purge_step``) hides every earlier event at step S or later."""
    shown = {}
    for path in sorted(folder.iterdir()):
        for e in _read_events(path):
            if e.HasField("session_log") and e.session_log.status == e.session_log.START:
                shown = {k: v for k, v in shown.items() if k[1] < e.step}
            for v in e.summary.value:
                shown[(v.tag, e.step)] = v.simple_value
    return shown


def test_a_resumed_run_does_not_draw_the_killed_epochs_twice(tmp_path):
    run = RunDir(str(tmp_path))
    first = MetricWriter(run)
    for epoch in (1, 2, 3, 4):  # killed after epoch 4; the newest checkpoint is epoch 2
        first.write({"epoch": epoch, "loss": float(epoch)})
    first.close()
    run.truncate_metrics(2)
    second = MetricWriter(run)  # the resumed call, looked at after its epoch 3
    second.write({"epoch": 3, "loss": 30.0})
    second.close()
    jsonl = {("loss", r["epoch"]): r["loss"] for r in run.read_metrics()}
    assert jsonl == {("loss", 1): 1.0, ("loss", 2): 2.0, ("loss", 3): 30.0}
    assert _tensorboard_view(tmp_path / "tensorboard") == jsonl
