"""``jaxcerv report`` on a run folder whose ``report/`` cannot be written: one line naming that
folder (not metrics.jsonl) with the ``--out`` hint, exit 2; ``--out=DIR`` writes it elsewhere."""

from __future__ import annotations

import os
import shutil

from jaxcerv.cli import report as report_command


def test_an_unwritable_report_folder_is_named_and_out_writes_elsewhere(smoke_workdir, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_workdir, run, ignore=shutil.ignore_patterns("report"))
    (run / "report").write_text("a file where the report folder would go")  # root can't write
    assert report_command.run(str(run), num_gallery=1, num_evolution=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write the report"), err
    assert str(run / "report") in err[0] and "metrics.jsonl" not in err[0]
    assert err[0].endswith("pass --out=DIR")

    out = tmp_path / "elsewhere"
    assert report_command.run(str(run), out=str(out), num_gallery=1, num_evolution=1) == 0
    index = capsys.readouterr().out.strip()
    assert index == str(out / "index.html") and os.path.isfile(index)
    assert os.path.isfile(out / "metrics.jsonl")  # the raw files are copied there too
    assert (run / "report").is_file()  # the run folder is untouched
