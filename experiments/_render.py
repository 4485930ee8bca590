"""The readout's report: ``report.json`` (strict JSON: NaN as null), ``report.html`` and
``effects.png`` under an output directory, and the readout stored in ``experiment_reports``
(what :func:`~._report.collect` and :func:`~._readout.analyze` produced; prints nothing)."""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opendisco._backend import backend_errors
from opendisco._store import finite_values

from ._model import Experiment
from ._readout import Readout

__all__ = ["REPORTS", "write_report"]

REPORTS = "experiment_reports"


def _png(readout: Readout, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = readout.estimates
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(est) + 1.2))
    for i, (_, _, e) in enumerate(est):
        base = e.control or 1.0
        ax.errorbar(
            [100 * e.effect / base],
            [i],
            xerr=[[100 * (e.effect - e.ci_low) / base], [100 * (e.ci_high - e.effect) / base]],
            fmt="o",
            capsize=4,
        )
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(est)), [f"{m}\n{a} vs {readout.arms[0]}" for m, a, _ in est])
    ax.set_xlabel("effect, % of control (95% CI)")
    ax.set_title(f"{readout.design} design" + (" — BLOCKED (SRM)" if readout.blocked else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


async def write_report(
    db: Any, exp: Experiment, readout: Readout, sides: dict[str, Any], out_dir: Path
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": exp.id,
        "at": datetime.now(UTC).isoformat(),
        **readout.to_dict(),
        "sides": sides,
    }
    paths = {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        "png": out_dir / "effects.png",
    }
    # NaN as null: an estimate there is none of (no exposure in an arm, no outcome in the
    # control, one cluster) is NaN, and FerretDB closed the connection on it (the report
    # failed with a StoreBackendError after it was computed); report.json is strict JSON
    doc = finite_values(json.loads(json.dumps(doc, default=str)))
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False))
    _png(readout, paths["png"])
    est_rows = [
        {
            "metric": m,
            "arm": a,
            "control": e.control,
            "treatment": e.treatment,
            "effect": e.effect,
            "relative": e.relative,
            "ci": [e.ci_low, e.ci_high],
            "p": e.p,
            "estimator": e.estimator,
        }
        for m, a, e in readout.estimates
    ]
    img = base64.b64encode(paths["png"].read_bytes()).decode()
    status = (
        "BLOCKED: sample-ratio mismatch — do not read the estimates" if readout.blocked else "ok"
    )
    paths["html"].write_text(
        "<!doctype html><meta charset='utf-8'><title>experiment " + html.escape(exp.id) + "</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}</style>"
        f"<h1>Experiment {html.escape(exp.id)}</h1><p>{html.escape(exp.name)}</p>"
        f"<p>design <b>{readout.design}</b>, arms {html.escape(', '.join(readout.arms))}, "
        f"{html.escape(str(exp.start))} → {html.escape(str(exp.stop or 'running'))}; "
        f"readout: <b>{status}</b></p>"
        f"<h2>Effects</h2>{_table(est_rows)}<img src='data:image/png;base64,{img}'>"
        f"<h2>Sample-ratio checks</h2>{_table([c.to_dict() for c in readout.srm])}"
        f"<h2>Viewers (what they saw and did)</h2>{_table(sides['viewer'])}"
        f"<h2>Candidates (what they received)</h2>{_table(sides['candidate'])}"
    )
    with backend_errors("storing the report failed"):
        await db[REPORTS].insert_one({"_id": f"{exp.id}@{doc['at']}", **doc})
    return paths
