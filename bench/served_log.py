"""The served-list log's cost on the API: bench/api.py with the log off and on, alternated.

    flock /tmp/opendisco-bench.lock $(./dev env)/bin/python bench/served_log.py \
        [--items 20000] [--levels 1,4,8] [--duration 8] [--rounds 2]

One kept bench/api namespace (built once), then ``--rounds`` × (log off, log on) runs of
``bench/api.py --reuse`` with ``OPENDISCO_SERVED_LOG=false|true`` (exploration at its default
share in both, so the only difference is the side effect); each run measures the API and the
bare candidate queries in the same run. Reported per concurrency: the API p99 with the log on
over the log off (medians over rounds; target ≤ 1.05) and each side's p99 ratio to the bare
engine. bench/api.py's own results and README section are restored afterwards.
Writes bench/results/served_log.json and the ``served-log`` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from opendisco import clients, load_settings

HERE = Path(__file__).resolve().parent


def run_api(args: argparse.Namespace, log: bool, extra: list[str]) -> dict:
    env = {**os.environ, "OPENDISCO_SERVED_LOG": "true" if log else "false"}
    cmd = [sys.executable, str(HERE / "api.py"), "--items", str(args.items)]
    cmd += ["--levels", args.levels, "--duration", str(args.duration), *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    sys.stderr.write(out.stderr[-2000:])
    return json.loads((HERE / "results" / "api.json").read_text()) | {"stderr": out.stderr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--levels", default="1,4,8")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    keep = Path(tempfile.mkdtemp())
    for name in ("results/api.json", "README.md"):
        shutil.copy(HERE / name, keep / Path(name).name)
    load = [os.getloadavg()[0]]
    rid: str | None = None
    try:
        first = run_api(args, False, ["--keep"])
        ns = re.search(r"--reuse (\w+)", first["stderr"])
        if ns is None:
            raise SystemExit(f"no kept namespace id in: {first['stderr'][-500:]}")
        rid = ns.group(1)
        runs: dict[bool, list[dict]] = {False: [first], True: []}
        for r in range(args.rounds):
            if r:
                runs[False].append(run_api(args, False, ["--reuse", rid, "--keep"]))
            runs[True].append(run_api(args, True, ["--reuse", rid, "--keep"]))
        load.append(os.getloadavg()[0])
    finally:
        for name in ("results/api.json", "README.md"):
            shutil.copy(keep / Path(name).name, HERE / name)
        if rid is not None:  # the kept namespace (bench/api.py's names)
            settings = load_settings()
            osc = clients.opensearch(settings)
            osc.indices.delete(
                index=f"bench-api-{rid}-items*", ignore_unavailable=True, expand_wildcards="all"
            )
            osc.close()
            with clients.mongo(settings) as mc:
                mc.drop_database(f"bench_api_{rid}")
    levels = [row["concurrency"] for row in runs[False][0]["levels"]]
    table = []
    for i, c in enumerate(levels):
        off = [run["levels"][i] for run in runs[False]]
        on = [run["levels"][i] for run in runs[True]]
        p99_off = statistics.median(x["api"]["p99_ms"] for x in off)
        p99_on = statistics.median(x["api"]["p99_ms"] for x in on)
        table.append(
            {
                "concurrency": c,
                "api_p99_off_ms": p99_off,
                "api_p99_on_ms": p99_on,
                "on_over_off": round(p99_on / p99_off, 3),
                "p99_ratio_to_bare_off": statistics.median(x["p99_ratio"] for x in off),
                "p99_ratio_to_bare_on": statistics.median(x["p99_ratio"] for x in on),
                "qps_off": statistics.median(x["api"]["qps"] for x in off),
                "qps_on": statistics.median(x["api"]["qps"] for x in on),
            }
        )
    result = {
        "items": args.items,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "load_avg_1m": {"before": round(load[0], 2), "after": round(load[-1], 2)},
        "levels": table,
    }
    (HERE / "results" / "served_log.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    write_readme(result)


def write_readme(r: dict) -> None:
    lines = [
        "<!-- served-log -->",
        "## served-log",
        "",
        f"`python bench/served_log.py --items {r['items']} --rounds {r['rounds']}`: bench/api.py"
        " on one kept namespace with the served-list log off and on, alternated"
        f" ({r['rounds']} rounds, {r['duration_s']:g} s per level and side; load"
        f" {r['load_avg_1m']['before']:.1f} → {r['load_avg_1m']['after']:.1f}). Target: API"
        " p99 with the log on ≤ 1.05 × off.",
        "",
        "| c | API p99 off | API p99 on | on / off | p99 / bare (off) | p99 / bare (on) |"
        " QPS off | QPS on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["levels"]:
        lines.append(
            f"| {x['concurrency']} | {x['api_p99_off_ms']:.1f} ms | {x['api_p99_on_ms']:.1f} ms |"
            f" {x['on_over_off']:.3f} | {x['p99_ratio_to_bare_off']:.2f} |"
            f" {x['p99_ratio_to_bare_on']:.2f} | {x['qps_off']:.1f} | {x['qps_on']:.1f} |"
        )
    lines += ["", "Full figures in `bench/results/served_log.json`.", "<!-- /served-log -->"]
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "\n".join(lines)
    pat = re.compile(r"<!-- served-log -->.*?<!-- /served-log -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block
    readme.write_text(text.rstrip() + "\n")


if __name__ == "__main__":
    main()
