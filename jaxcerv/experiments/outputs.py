"""Everything a suite run writes beside its rows: ``W/<suite>.md`` / ``.csv``, the figures,
``W/<suite>.html`` and ``W/index.html`` linking every suite run in W."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from jaxcerv.experiments import figures, tables
from jaxcerv.experiments.results import add_explanation, load_row, split_diverged
from jaxcerv.experiments.suites import PROPOSED, SUITES, Variant


def _load_data(config: dict, workdir: str) -> tuple[Any, Any] | tuple[None, None]:
    from jaxcerv.data import pipeline

    try:
        return pipeline.load(ml_collections.ConfigDict(config), workdir)
    except Exception as e:  # noqa: BLE001 - the tables do not need the pixels
        print(f"warning: dataset unavailable ({e}); no heatmap metrics or Fig. 5c", flush=True)
        return None, None


def write_outputs(suite: str, workdir: str, variants: Sequence[Variant], *, n_boot: int,
                  seed: int) -> dict[str, str]:
    """Tables, figures and index.html for the finished variants (a diverged row is named in the
    caption, without numbers); returns name -> path."""
    from jaxcerv.reporting import viz
    variants, diverged_note = split_diverged(workdir, variants)
    rows = [load_row(workdir, v) for v in variants]
    data: dict[str, tuple[Any, Any]] = {}
    for row in rows:
        if row.weights is None:
            continue
        key = json.dumps([row.config["grid_size"], row.config["patch_size"]])
        if key not in data:
            data[key] = _load_data(row.config, workdir)
        add_explanation(row, data[key][1], n_boot, seed)
    records = tables.table_rows(rows, n_boot, seed)
    text = tables.caption(suite, rows, n_boot, tables.pretrain_minutes(workdir))
    text += diverged_note
    out = {"md": os.path.join(workdir, f"{suite}.md"), "csv": os.path.join(workdir, f"{suite}.csv")}
    with open(out["md"], "w") as f:
        f.write(tables.markdown_table(records, text))
    tables.write_csv(out["csv"], records)
    out["fig4a"] = figures.fig4a(records, os.path.join(workdir, f"{suite}_fig4a.png"))
    free = {r.variant.label: (r.labels, r.probs) for r in rows}  # all are annotation-free
    out["fig4b"] = viz.roc_curves(free, os.path.join(workdir, f"{suite}_fig4b.png"))
    by_name = {r.variant.name: r for r in rows}
    if PROPOSED in by_name and "no_regulator" in by_name:
        c = by_name[PROPOSED].config
        source, recs = data.get(json.dumps([c["grid_size"], c["patch_size"]]), (None, None))
        if source is not None:
            made = figures.fig5c(by_name[PROPOSED], by_name["no_regulator"], source, recs,
                                 c["patch_size"], os.path.join(workdir, f"{suite}_fig5c.png"))
            if made:
                out["fig5c"] = made
    out["index"] = write_index(suite, workdir, text, out, variants)
    return out


def write_index(suite: str, workdir: str, text: str, out: Mapping[str, str],
                variants: Sequence[Variant]) -> str:
    rel = {k: os.path.basename(v) for k, v in out.items()}
    with open(out["md"]) as f:
        table = f.read()
    parts = [f"<h1>jaxcerv experiments: {html.escape(suite)}</h1>",
             f"<p>{html.escape(text)}</p>",
             f"<p>Table: <a href='{rel['md']}'>{rel['md']}</a>, "
             f"<a href='{rel['csv']}'>{rel['csv']}</a></p>",
             f"<pre>{html.escape(table)}</pre>"]
    for key, title in (("fig4a", "Fig. 4a: normalised multi-metric comparison"),
                       ("fig4b", "Fig. 4b: ROC of every annotation-free approach (pooled test)"),
                       ("fig5c", "Fig. 5c: with and without the regulator")):
        if key in rel:
            parts.append(f"<h2>{title}</h2><img src='{rel[key]}' style='max-width:100%'>")
    parts.append("<h2>Each variant's report</h2><ul>" + "".join(
        f"<li><a href='{html.escape(v.name)}/report/index.html'>{html.escape(v.label)}</a></li>"
        for v in variants) + "</ul>")
    page = os.path.join(workdir, f"{suite}.html")
    _write_html(page, parts)
    suites = [x for x in SUITES if os.path.exists(os.path.join(workdir, f"{x}.html"))]
    index = os.path.join(workdir, "index.html")
    _write_html(index, ["<h1>jaxcerv experiments</h1><ul>"] + [
        f"<li><a href='{x}.html'>{x}</a>: <a href='{x}.md'>{x}.md</a>, "
        f"<a href='{x}.csv'>{x}.csv</a></li>" for x in suites] + ["</ul>"])
    return index


def _write_html(path: str, parts: Sequence[str]) -> None:
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>jaxcerv experiments</title>"
                "<body style='font-family:sans-serif'>" + "\n".join(parts) + "</body>")
