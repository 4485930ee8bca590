"""Mutation check of the guards behind the product's guarantees (run by hand, not by CI).

Each mutant removes one guard in a clean clone of HEAD — a layer of the hard rule (the
engine's template fragments, the in-process rules and the filter stage, the page re-check, the
degraded fallback), of exactly-once counting (the events' claim insert, the counters' marks,
the engine and store fences) or of bad input's handling (dead letters, the query text's clause
budget, events about oneself, the parameters no override may set) — and runs the tests that
state that guarantee (``./dev test <files> -x -n 2``, the real servers). A mutant those tests
pass is a guarantee no test holds: the exit status is then 1. A mutant whose code moved (its
text is no longer found exactly once) is an error, never a pass.

    python tests/mutants.py           # every mutant (~20 min on 2 cores)
    python tests/mutants.py F2 E1     # those whose id starts so
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTIALS = "queries/templates/_partials.json"
FILTERS = "serving/_filters.py"
FALLBACK = "api/_fallback.py"
RULES = ("tests/serving/test_serving_rules.py", "tests/serving/test_serving_rules_bounds.py")
SAFETY = "tests/api/test_api_safety.py"
ONCE = ("tests/signals/test_signals_late_writes.py", "tests/signals/test_signals_claims_faults.py")
LETTERS = (
    "tests/ingest/test_ingest_dead_letters.py",
    "tests/ingest/test_ingest_dead_letter_lifecycle.py",
    "tests/ingest/test_ingest_odd_docs.py",
)
OVERRIDES = (
    "tests/experiments/test_assign.py",
    "tests/playground/test_playground_units.py",
    "tests/playground/test_playground_api.py",
)


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file, text, replacement)
    tests: tuple[str, ...]


#: the three layers of self-exclusion: the template's own-items term, the member's profile id
#: among the excluded ids, the in-process rule
SELF_TERM = (
    PARTIALS,
    '{"term": {"owner_id": {"$param": "viewer_id"}}}',
    '{"term": {"owner_id": "-"}}',
)
SELF_ID = (
    FILTERS,
    "own = {self.profile_id} if self.profile_id else set()",
    "own: set[str] = set()",
)
SELF_RULE = (
    FILTERS,
    "if self.member and (item_id == self.profile_id or owner == self.viewer_id):",
    "if False:",
)


MUTANTS = (
    # the engine's half of the hard rule (the in-process rules kept): the engine alone
    Mutant(
        "T1",
        "template: available",
        ((PARTIALS, '{"term": {"available": true}},', '{"match_all": {}},'),),
        RULES,
    ),
    Mutant(
        "T2",
        "template: the candidate's gender preference",
        (
            (
                PARTIALS,
                '{"term": {"pref_genders": {"$param": "viewer_gender"}}}',
                '{"match_all": {}}',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T3",
        "template: the candidate's age preferences",
        (
            (
                PARTIALS,
                '{"range": {"pref_age_min": {"gt": {"$param": "viewer_age"}}}}',
                '{"range": {"pref_age_min": {"gt": 100000}}}',
            ),
            (
                PARTIALS,
                '{"range": {"pref_age_max": {"lt": {"$param": "viewer_age"}}}}',
                '{"range": {"pref_age_max": {"lt": -1}}}',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T4",
        "template: the viewer's gender preference",
        (
            (
                PARTIALS,
                '{"terms": {"gender": {"$param": "viewer_pref_genders"}}}',
                '{"match_all": {}}',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T5",
        "template: the viewer's minimum age",
        (
            (
                PARTIALS,
                '{"range": {"age": {"gte": {"$param": "viewer_pref_age_min"}}}}',
                '{"match_all": {}}',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T6",
        "template: excluded ids (seen, hidden, own)",
        (
            (
                PARTIALS,
                '{"ids": {"values": {"$param": "exclude_ids"}}},',
                '{"$if": "exclude_ids", "then": {"ids": {"values": ["-"]}}},',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T7",
        "template: the viewer's own items",
        (SELF_TERM,),
        RULES,
    ),
    Mutant(
        "T8",
        "template: owners blocked either way",
        (
            (
                PARTIALS,
                '{"terms": {"owner_id": {"$param": "exclude_owners"}}}',
                '{"terms": {"owner_id": ["-"]}}',
            ),
        ),
        RULES,
    ),
    Mutant(
        "T9",
        "template: the capped list",
        ((PARTIALS, '"id": "_capped"', '"id": "_none"'),),
        ("tests/queries/test_queries_engine.py", SAFETY),
    ),
    # the in-process half (the engine's kept): the rules themselves, the filter stage
    Mutant(
        "F1",
        "rules: available",
        (
            (
                FILTERS,
                'if item.get("available") is not True or item.get("deleted") is True:',
                "if False:",
            ),
        ),
        RULES,
    ),
    Mutant(
        "F2",
        "rules: self",
        (SELF_RULE,),
        RULES,
    ),
    Mutant(
        "F3",
        "rules: blocks",
        (
            (
                FILTERS,
                "if item_id in self.blocked_ids or "
                "(owner is not None and owner in self.blocked_owners):",
                "if False:",
            ),
        ),
        RULES,
    ),
    Mutant("F4", "rules: seen", ((FILTERS, "if item_id in self.seen_ids:", "if False:"),), RULES),
    Mutant(
        "F5",
        "rules: two-sided eligibility",
        ((FILTERS, "        if not self.eligible(item):\n", "        if False:\n"),),
        RULES,
    ),
    Mutant(
        "F6",
        "rules: exposure cap",
        ((FILTERS, "if self.capped_ids is not None and item_id in self.capped_ids:", "if False:"),),
        RULES,
    ),
    Mutant(
        "F7",
        "rules: an owner id that cannot be read",
        (
            (
                FILTERS,
                "if self.member and owner is not None and not readable_id(owner):",
                "if False:",
            ),
        ),
        RULES,
    ),
    Mutant(
        "H1",
        "the filter stage keeps every hit",
        (
            (
                FILTERS,
                "            rule = rules.broken(c.id, c.item)\n",
                "            rule = None\n",
            ),
        ),
        RULES,
    ),
    Mutant(
        "S1",
        "self-exclusion, all three layers",
        (SELF_TERM, SELF_ID, SELF_RULE),
        ("tests/playground/test_playground_api.py", SAFETY),
    ),
    # what changed since the engine's copy, and the degraded answers
    Mutant(
        "P1",
        "the page's re-check against MongoDB",
        (
            (
                "serving/_page.py",
                "rule = rules.broken(i, now[i]) if i in now else Rule.AVAILABLE",
                "rule = None",
            ),
        ),
        ("tests/serving/test_serving_recheck.py", SAFETY),
    ),
    Mutant(
        "G1",
        "fallback: both rule checks",
        (
            (
                FALLBACK,
                "queue = [r for r in pool if rules.allows(r.id, r.item)]",
                "queue = list(pool)",
            ),
            (FALLBACK, "if now is not None and rules.allows(r.id, now):", "if now is not None:"),
        ),
        (SAFETY,),
    ),
    Mutant(
        "G2",
        "fallback: the re-check of fresh item fields",
        ((FALLBACK, "if now is not None and rules.allows(r.id, now):", "if now is not None:"),),
        (SAFETY,),
    ),
    Mutant(
        "G3",
        "a short page's filler",
        (
            (
                FALLBACK,
                "if r.id not in have and rules.allows(r.id, r.item):",
                "if r.id not in have:",
            ),
        ),
        ("tests/api/test_api_page_fill.py",),
    ),
    # exactly-once counting
    Mutant(
        "E1",
        "claims: an id already stored counts as claimed",
        (
            (
                "signals/_claims.py",
                'return {docs[e["index"]]["_id"] for e in exc.details["writeErrors"]}',
                "return set()",
            ),
        ),
        ONCE,
    ),
    Mutant(
        "E2",
        "counters: a mark they keep is applied again",
        (
            (
                "signals/_counting.py",
                '" && ctx._source.marks.contains(params.mark)"',
                "\" && ctx._source.marks.contains('-')\"",
            ),
        ),
        ONCE,
    ),
    Mutant(
        "E3",
        "an id reused about a gone item taken for a retry",
        (("signals/_event_items.py", "if stored_about(d) == about(ev)]", "if True]"),),
        ("tests/signals/test_signals_deleted_items.py",),
    ),
    Mutant(
        "E4",
        "engine fence: every fenced write counted as landed",
        (("signals/_fence.py", 'if res.get("result") == "noop":', "if True:"),),
        ONCE,
    ),
    Mutant(
        "E5",
        "store fence: guarded writes not refused",
        (
            (
                "signals/_store_fence.py",
                'return {"$pop": {f"{FENCED}.{mark}": 1}}',
                'return {"$set": {"unguarded": 1}}',
            ),
        ),
        ONCE,
    ),
    # bad input loses nothing and changes no query's structure
    Mutant(
        "B1",
        "ingest: a document refused by validation not dead-lettered",
        (
            (
                "ingest/_apply.py",
                """            out.letters.append(
                dead_letter(
                    source, "validation", raw, str(exc), collection=settings.items_collection
                )
            )
""",
                "",
            ),
        ),
        LETTERS,
    ),
    Mutant(
        "B2",
        "ingest: a document the engine refused not dead-lettered",
        (
            (
                "ingest/_apply.py",
                "for action, reason in result.rejected:\n        letters.append(",
                "for action, reason in result.rejected:\n        (lambda *_: None)(",
            ),
        ),
        LETTERS,
    ),
    Mutant(
        "B3",
        "query text: terms past the clause budget kept",
        (
            (
                "queries/_params.py",
                "return text[: ends[max_terms - 1]] if len(ends) > max_terms else text",
                "return text",
            ),
        ),
        ("tests/queries/test_queries_render.py", "tests/queries/test_queries_engine.py"),
    ),
    Mutant(
        "B4",
        "events: an event about the member's own profile applied",
        (
            (
                "signals/_event_items.py",
                'elif item is not None and item.get("owner_id") == ev.user_id:',
                "elif False:",
            ),
        ),
        ("tests/api/test_api_adversarial.py",),
    ),
    Mutant(
        "B5",
        "overrides: a parameter every request sets taken from a params file, draft or arm",
        (
            (
                "serving/_stages.py",
                "if k in specs and k not in REQUEST_PARAMS}",
                "if k in specs}",
            ),
        ),
        OVERRIDES,
    ),
    Mutant(
        "B6",
        "artifacts: a parameter every request sets accepted in template_params",
        (("serving/_artifacts.py", "if name in REQUEST_PARAMS:", "if False:"),),
        OVERRIDES,
    ),
)


def run(clone: Path, m: Mutant) -> tuple[str, str]:
    """Apply ``m`` in ``clone``, run its tests, restore: ``(verdict, detail)``."""
    originals: dict[Path, str] = {}
    try:
        for name, text, new in m.edits:
            path = clone / name
            current = path.read_text()
            originals.setdefault(path, current)
            if current.count(text) != 1:
                return "ERROR", f"{name}: the mutated text is found {current.count(text)} times"
            path.write_text(current.replace(text, new))
        cmd = ["./dev", "test", *m.tests, "-q", "-x", "-n", "2", "-p", "no:cacheprovider"]
        done = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, timeout=1800)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    if done.returncode in (1, 2) and failed:  # 2: -x stopped the workers
        return "caught", failed[0].removeprefix("FAILED ")[:140]
    if done.returncode == 0:
        return "SURVIVED", "every test passed"
    return "ERROR", f"pytest exit {done.returncode}: {done.stdout.strip().splitlines()[-1:]}"


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or any(m.id.startswith(a) for a in argv)]
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        clone = Path(tmp) / "opendisco"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        bad = 0
        for m in chosen:
            t0 = time.monotonic()
            verdict, detail = run(clone, m)
            bad += verdict != "caught"
            took = time.monotonic() - t0
            print(f"{m.id:3} {verdict:8} {took:5.0f} s  {m.what}: {detail}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutants caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
