"""Progress lines in a log file and on a terminal, against hand-computed steps, rates and ETAs."""

import io

import pytest

from jaxcerv.runtime import progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "seconds, text",
    [(0.4, "0 s"), (42, "42 s"), (185, "3 min 05 s"), (3600 * 2 + 7 * 60 + 20, "2 h 07 min")],
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_eta_leaves_out_the_first_step():
    # First step done at t=10 (compilation); steps 2..5 took 2 s each -> 5 remaining steps: 10 s.
    assert progress.eta_seconds(5, 10, t_first=10.0, now=18.0) == pytest.approx(10.0)
    assert progress.eta_seconds(1, 10, t_first=10.0, now=10.0) is None


def test_log_file_gets_a_plain_line_every_interval_and_a_final_one():
    clock, out = Clock(), io.StringIO()
    bar = progress.Progress(10, "epoch 1/3", stream=out, every_s=30.0, clock=clock)
    clock.t += 20.0  # the first step compiles: 20 s
    bar.update()
    for _ in range(9):  # then 5 s a step: lines at 30 s (step 3) and 60 s (step 9), then the end
        clock.t += 5.0
        bar.update(postfix="loss 0.70")
    bar.close()
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "epoch 1/3: 3/10 (30%), 30 s, 0.2 step/s, ETA 35 s | loss 0.70",
        "epoch 1/3: 9/10 (90%), 1 min 00 s, 0.2 step/s, ETA 5 s | loss 0.70",
        "epoch 1/3: 10/10 (100%), 1 min 05 s, 0.2 step/s, ETA 0 s | loss 0.70",
    ]


def test_terminal_redraws_one_line_with_a_bar():
    clock, out = Clock(), Terminal()
    with progress.Progress(4, "eval", stream=out, clock=clock) as bar:
        for _ in range(2):
            clock.t += 1.0
            bar.update()
    text = out.getvalue()
    assert text.count("\r\033[K") == 3  # two redraws and the clearing before the final line
    final = text.rsplit("\r\033[K", 1)[1]
    assert final.endswith("\n") and final.count("\n") == 1
    assert "2/4 (50%)" in final and "[" + "#" * 12 + "." * 12 + "]" in final


def test_announce_brackets_a_phase_with_its_duration():
    clock, out = Clock(), io.StringIO()
    with progress.announce("compiling the train step", stream=out, clock=clock):
        clock.t += 15.2
    assert out.getvalue().splitlines() == [
        "compiling the train step...",
        "compiling the train step: done in 15 s",
    ]


def test_disabled_reporters_write_nothing():
    clock, out = Clock(), Terminal()
    with progress.Progress(3, "epoch", stream=out, clock=clock, enabled=False) as bar:
        bar.update()
    with progress.announce("evaluating", stream=out, clock=clock, enabled=False):
        pass
    assert out.getvalue() == "" and bar.done == 1
