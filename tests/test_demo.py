"""``opendisco demo``, the README's main job, end to end on a small marketplace and the real
servers: sample data, reindex, the four lists it prints — twice, as a user re-running it does
(the second run finds the first run's likes and must say so, and never shows them again)."""

from __future__ import annotations

import re

from click.testing import CliRunner

from opendisco import Settings
from opendisco.cli.main import cli

_ROW = re.compile(r"^│\s*\d+\s*│\s*(\S+)\s*│")
_LIKED = re.compile(r"posted likes of \[([^\]]*)\]: accepted (\d+), duplicates (\d+)")


def _tables(output: str) -> list[list[str]]:
    """The ids of each table the demo printed, in order."""
    tables: list[list[str]] = []
    for line in output.splitlines():
        if line.startswith("┏"):
            tables.append([])
        elif tables and (m := _ROW.match(line)):
            tables[-1].append(m.group(1))
    return tables


def _run(settings: Settings) -> tuple[str, list[list[str]], list[str]]:
    res = CliRunner().invoke(cli, ["demo", "--size", "150", "-k", "5", "--no-api"], obj=settings)
    assert res.exit_code == 0, res.output
    liked = _LIKED.search(res.output)
    assert liked is not None, res.output
    ids = re.findall(r"'([^']+)'", liked.group(1))
    assert len(ids) == 2 and liked.group(2) == "2" and liked.group(3) == "0", res.output
    return res.output, _tables(res.output), ids


def test_demo_runs_twice_and_never_shows_a_like_again(settings: Settings, run_id: str) -> None:
    demo = settings.model_copy(
        update={"index_alias": f"t{run_id}-demo", "mongo_db": f"t{run_id}demo"}
    )
    out, tables, liked = _run(demo)
    assert "no history yet (cold start" in out and "(cold_start," in out
    assert [len(t) for t in tables] == [5, 5, 5, 5], out  # first, after the likes, similar, search
    first, after, similar, search = tables
    assert liked == first[:2]
    own = "p1"  # u1's own profile (ingest._sample: member u<i> owns p<i>)
    for ids in (first, after, search):  # u1's lists
        assert own not in ids, out
    assert not set(liked) & set(after) and not set(liked) & set(search), out
    assert liked[0] not in similar  # similar to it: never itself

    out2, tables2, liked2 = _run(demo)
    assert "with the likes of an earlier demo run" in out2 and "no history yet" not in out2
    for ids in (tables2[0], tables2[1], tables2[3]):
        assert own not in ids and not set(liked) & set(ids), out2
    assert not set(liked2) & set(tables2[1]), out2
