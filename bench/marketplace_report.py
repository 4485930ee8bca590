"""The marketplace bench's reading: the issue's targets, the validation pick, and the
``marketplace`` section of bench/README.md (``bench/marketplace.py`` runs the simulations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

TARGETS = (
    # (meets() key, the wording, the compared figure, its prefix)
    ("mutual_likes_x1.3", "mutual likes / 1,000 impr. ≥ 1.3×", "mutual_likes_per_1000_ratio", "×"),
    ("gini_not_higher", "inbound Gini not higher", "inbound_gini_diff", ""),
    ("top1_at_most_half", "top-1% inbound share ≤ 0.5×", "inbound_top1_share_ratio", "×"),
    ("match_share_up_20pct", "members matched / week ≥ 1.2×", "match_share_per_week_ratio", "×"),
)  # fmt: skip


def meets(c: dict[str, Any]) -> dict[str, bool]:
    return {
        "mutual_likes_x1.3": c["mutual_likes_per_1000_ratio"]["mean"] >= 1.3,
        "gini_not_higher": c["inbound_gini_diff"]["mean"] <= 0.0,
        "top1_at_most_half": c["inbound_top1_share_ratio"]["mean"] <= 0.5,
        "match_share_up_20pct": c["match_share_per_week_ratio"]["mean"] >= 1.2,
    }


def validation_meets(row: dict[str, Any]) -> dict[str, bool]:
    """The targets one population's validation row meets, "at equal or lower Gini" read per
    seed: the Gini is no higher on **every** validation seed (a mean of two seeds at −0.003
    was +0.006 on one seed, and its test run on the larger market came out +0.032)."""
    out = dict(row["meets"])
    out["gini_not_higher"] = max(row["compare"]["inbound_gini_diff"]["per_seed"]) <= 0.0
    return out


def pick_point(tuning: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid point meeting the most of the issue's targets on validation, summed over
    **every** population (:func:`validation_meets`), ties broken by the larger of the
    populations' smallest mutual-likes ratio (a point must hold on the larger market too:
    picks made on 10×150 alone went wrong on 3×500 twice)."""

    def key(t: dict[str, Any]) -> tuple[int, float]:
        rows = t["by_population"].values()
        met = sum(sum(validation_meets(r).values()) for r in rows)
        return met, min(r["compare"]["mutual_likes_per_1000_ratio"]["mean"] for r in rows)

    return dict(max(tuning, key=key)["point"])


def _fmt(c: dict[str, Any], key: str) -> str:
    v = c[key]
    return f"{v['mean']:.3f} ± {v['se']:.3f}"


def _point(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "(serving defaults)"


def _controller_note(r: dict[str, Any]) -> str:
    """Where the controllers ended the test runs: the budget at its floor, the attention cap."""
    parts = []
    for name, block in r["populations"].items():
        two = [run["two-sided"] for run in block["runs"]]
        floor = r["defaults"]["targets"]["budget_min"]
        at = sum(1 for x in two if x.get("pacing_budget_last", 1e9) <= floor + 1e-9)
        caps = [x["attention_cap_last"] for x in two if "attention_cap_last" in x]
        cap = f", attention cap {min(caps):.2f}–{max(caps):.2f}× the mean inbound" if caps else ""
        parts.append(f"{name}: budget at its floor in {at} of {len(two)} runs{cap}")
    return "; ".join(parts)


def _intro(r: dict[str, Any]) -> list[str]:
    return [
        "<!-- marketplace -->",
        "## marketplace",
        "",
        "`python bench/marketplace.py --write` (or `--stage validation --write`, then",
        "`--stage test --write`; `--readme-only` rewrites this section from",
        "`bench/results/marketplace.json`): issue 17's marketplace health in the simulator",
        f"(`opendisco.experiments.sim`, regime `{r['regime']}`), every session served through the",
        "real reranker with the pipeline's features: the two-sided ranker **with the serving",
        "defaults** (`RerankConfig()` and the pacing controller's `Settings` defaults; reciprocal",
        "+ pacing steps, candidates flagged as members) against the **one-sided linear ranker**",
        "(today's default steps without the two-sided ones, default weights, `inbound_capacity`",
        "20 as before issue 17, members not flagged). 7-day pre-period under the one-sided",
        "ranker, then 14 days per arm from that state with common random numbers. Each cell:",
        "one-sided → two-sided (mean over the test seeds), then the **paired** per-seed ratio",
        "(×) or difference ± its standard error over the test seeds. The figures are statistics",
        "of seeded runs (no timing): identical on any machine and load.",
        "",
        f"The defaults were picked on **validation seeds {r['validation_seeds']}** only, on",
        f"**both** populations ({', '.join(r['validation_populations'])}; test seeds below are",
        "distinct), every grid point served from one shared pre-period per seed: the point",
        "meeting the most targets summed over the populations, the Gini counted as not higher",
        "only when it is no higher on **every** validation seed, ties broken by the larger of",
        "the populations' smallest mutual-likes ratio; the test stage runs only when the pick",
        "*is* the serving defaults. `attention_cap` is the controller whose setpoint is the",
        "top-1% share itself (`signals._pacing.cap_step`: a ceiling on each member's inbound",
        "attention, integral in log space per day, members above it leave the page);",
        "`reply_capacity` the congestion-aware reply chance (`rerank._market.reply_chance`).",
        "Validation grid (paired means over the validation seeds; Gini per seed in brackets):",
        "",
        "| point | population | mutual likes / 1,000 | matched / week | Gini (diff.) | top-1% |",
        "|---|---|---|---|---|---|",
    ]


def readme_section(r: dict[str, Any]) -> str:
    """The ``marketplace`` section of bench/README.md from a result."""
    lines = _intro(r)
    for t in r["tuning"]:
        for name, row in t["by_population"].items():
            c = row["compare"]
            lines.append(
                f"| {_point(t['point'])} | {name} "
                f"| ×{c['mutual_likes_per_1000_ratio']['mean']:.3f} "
                f"| ×{c['match_share_per_week_ratio']['mean']:.3f} "
                f"| {c['inbound_gini_diff']['mean']:+.3f} "
                f"({', '.join(f'{x:+.3f}' for x in c['inbound_gini_diff']['per_seed'])}) "
                f"| ×{c['inbound_top1_share_ratio']['mean']:.3f} |"
            )
    lines += [
        "",
        f"Picked (now the serving defaults): {_point(r['picked'])}. Load before/after:",
        f"{r['load']['before']} / {r['load']['after']}; {r['seconds']:.0f} s (test stage).",
        "",
        "| population (markets × members) | test seeds | mutual likes / 1,000 impr. | share of"
        " members with ≥ 1 match / week | inbound Gini (diff.) | top-1% share of inbound"
        " attention |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in r["populations"].items():
        c = block["compare"]
        base, two = c["one-sided"], c["two-sided"]

        def pair(k: str, base: dict[str, Any] = base, two: dict[str, Any] = two) -> str:
            return f"{base[k]['mean']:.4g} → {two[k]['mean']:.4g}"

        lines.append(
            f"| {name} | {block['test_seeds']} "
            f"| {pair('mutual_likes_per_1000')} (×{_fmt(c, 'mutual_likes_per_1000_ratio')}) "
            f"| {pair('match_share_per_week')} (×{_fmt(c, 'match_share_per_week_ratio')}) "
            f"| {pair('inbound_gini')} ({_fmt(c, 'inbound_gini_diff')}) "
            f"| {pair('inbound_top1_share')} (×{_fmt(c, 'inbound_top1_share_ratio')}) |"
        )
    lines += ["", "Issue 17's targets on the test seeds:", ""]
    for name, block in r["populations"].items():
        c, ok = block["compare"], meets(block["compare"])
        cells = [
            f"{label}: {prefix}{_fmt(c, key)} {'met' if ok[k] else '**missed**'}"
            for k, label, key, prefix in TARGETS
        ]
        lines.append(f"* {name}: " + "; ".join(cells) + ".")
    lines += [
        "",
        f"Controllers at the end of the test runs: {_controller_note(r)}. The diagnosis (where",
        "the matches are lost, the estimate's accuracy, the trade-off the grid shows) is in",
        "the next section.",
        "",
        "Full figures (per seed, the validation grid) in `bench/results/marketplace.json`.",
        "<!-- /marketplace -->",
    ]
    return "\n".join(lines) + "\n"


def write_readme(section: str) -> None:
    path = HERE / "README.md"
    text = path.read_text()
    start, end = "<!-- marketplace -->", "<!-- /marketplace -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
