"""FerretDB's range pushdown and ``_id`` pushdown beside other keys (build patches in
``opendisco.services._ferretdb_patches``): a filter returns exactly what MongoDB matches across
odd documents; ``up`` restarts a local FerretDB of an older patch level only.

The pushdown is a superset pre-filter evaluated by SQLite: a row is dropped only when the
stored schema says the field holds one date (or one int/long) failing the comparison. The
documents below are the cases where that could go wrong: missing, null, arrays of dates
(matching through one element), arrays of other things, strings, ints equal to a date's
milliseconds, doubles, nested documents, timestamps. Each filter's answer is checked against
the MongoDB semantics written out by hand and, on FerretDB, against the handler alone (the
same filter wrapped in ``$and``, which the patch does not push down).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Int64, ObjectId, Timestamp

from opendisco import clients, load_settings
from opendisco.ingest._feed import NOT_A_DATE
from opendisco.services import FerretDBService
from opendisco.services._ferretdb_patches import PATCH_LEVEL
from opendisco.services._process import cmdline, read_pid, spawn, stop_pid

D1, D2, D3, D4 = (datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3, 4))

DOCS: dict[str, Any] = {
    "null": None,
    "d1": D1,
    "d2": D2,
    "d3": D3,
    "d4": D4,
    "old": datetime(1960, 1, 1, tzinfo=UTC),  # negative milliseconds
    "arr_d1_d4": [D1, D4],
    "arr_d2": [D2],
    "arr_empty": [],
    "arr_null": [None],
    "arr_mixed": [3, "x", D3],
    "arr_doc": [{"a": D2}],
    "doc": {"a": D2},
    "string": "2026-01-02",
    "int5": 5,
    "zero": 0,
    "neg": -7,
    "long_big": Int64(2**40),
    "long_neg": Int64(-(2**62)),
    "ms_of_d1": Int64(int(D1.timestamp() * 1000)),  # an int, not a date
    "double": 2.5,
    "timestamp": Timestamp(int(D2.timestamp()), 1),
    "bool": True,
    "oid": ObjectId("650000000000000000000000"),
    "binary": Binary(b"x"),
}
NOT_DATES = set(DOCS) - {"d1", "d2", "d3", "d4", "old", "arr_d1_d4", "arr_d2", "arr_mixed"}
NOT_DATES |= {"missing", "other"}

# (filter, what MongoDB matches, pushed down on FerretDB)
CASES: list[tuple[dict[str, Any], set[str], bool]] = [
    ({"f": {"$gt": D2}}, {"d3", "d4", "arr_d1_d4", "arr_mixed"}, True),
    ({"f": {"$gte": D2}}, {"d2", "d3", "d4", "arr_d1_d4", "arr_d2", "arr_mixed"}, True),
    ({"f": {"$lt": D2}}, {"d1", "old", "arr_d1_d4"}, True),
    ({"f": {"$lte": D2}}, {"d1", "d2", "old", "arr_d1_d4", "arr_d2"}, True),
    ({"f": {"$gte": D2, "$lt": D4}}, {"d2", "d3", "arr_d1_d4", "arr_d2", "arr_mixed"}, True),
    ({"f": {"$gt": 5}}, {"long_big", "ms_of_d1"}, True),
    ({"f": {"$gte": 0}}, {"int5", "zero", "long_big", "ms_of_d1", "double", "arr_mixed"}, True),
    ({"f": {"$lt": Int64(0)}}, {"neg", "long_neg"}, True),
    ({"f": {"$lte": -7}}, {"neg", "long_neg"}, True),
    ({"f": {"$not": {"$type": "date"}}}, NOT_DATES, True),
    # the polling feed's window and the reindex catch-up, as the ingest code writes them
    (
        {"$or": [{"f": {"$gte": D3}}, {"f": NOT_A_DATE["updated_at"]}]},
        NOT_DATES | {"d3", "d4", "arr_d1_d4", "arr_mixed"},
        True,
    ),
    ({"f": {"$gte": D4}}, {"d4", "arr_d1_d4"}, True),
    ({"$or": [{"f": {"$gte": D4}}, {"g": {"$lt": D2}}]}, {"d4", "arr_d1_d4", "other"}, True),
    ({"f": {"$gte": D3}, "g": {"$exists": False}}, {"d3", "d4", "arr_d1_d4", "arr_mixed"}, True),
    # the _id condition beside other keys (patch level 5): pushed down, the rest checked
    ({"_id": {"$in": ["d1", "d2", "missing", "nope"]}, "f": {"$exists": True}}, {"d1", "d2"}, True),
    ({"_id": "d3", "f": D4}, set(), True),
    ({"f": D4, "_id": "arr_d1_d4"}, {"arr_d1_d4"}, True),
    ({"_id": {"$in": ["d1", "d2", "other"]}, "$or": [{"f": D1}, {"g": D1}]}, {"d1", "other"}, True),
    ({"_id": {"$in": ["d1", "d4"]}, "f": {"$gte": D3}}, {"d4"}, True),
    ({"_id": {"$nin": ["d3"]}, "f": {"$gte": D3}}, {"d4", "arr_d1_d4", "arr_mixed"}, True),
    ({"_id": {"$in": ["d1", "d4"]}, "f": {"$not": {"$gte": D3}}}, {"d1"}, True),
    # not pushed down: doubles, a branch without a condition, a field with other operators
    ({"f": {"$gte": 2.5}}, {"int5", "long_big", "ms_of_d1", "double", "arr_mixed"}, False),
    ({"$or": [{"f": {"$gte": D4}}, {"g": D1}]}, {"d4", "arr_d1_d4", "other"}, False),
    ({"f": {"$gte": D3, "$ne": D4}}, {"d3", "arr_mixed"}, False),  # $ne: no element equals
]


def _insert_odd_docs(coll: Any) -> Any:
    coll.insert_many(
        [{"_id": k, "f": v} for k, v in DOCS.items()]
        + [{"_id": "missing"}, {"_id": "other", "g": D1}]
    )
    return coll


@pytest.fixture(scope="module")
def probe_db(settings: Any) -> Iterator[Any]:
    client = clients.mongo(settings)
    db = client[f"{settings.mongo_db}rp"]
    yield db
    client.drop_database(db.name)
    client.close()


@pytest.fixture(scope="module")
def odd_docs(probe_db: Any) -> Any:
    return _insert_odd_docs(probe_db["range_probe"])


@pytest.mark.parametrize(("flt", "expected", "pushed"), CASES, ids=[str(c[0]) for c in CASES])
def test_range_filters_match_mongodb_semantics(
    odd_docs: Any, flt: dict[str, Any], expected: set[str], pushed: bool
) -> None:
    got = {d["_id"] for d in odd_docs.find(flt)}
    assert got == expected
    handler_alone = {d["_id"] for d in odd_docs.find({"$and": [flt]})}
    assert handler_alone == expected
    assert odd_docs.count_documents(flt) == len(expected)  # aggregate: $match pushed down
    plan = odd_docs.find(flt).explain()
    if "ferretdbVersion" not in plan.get("serverInfo", {}):
        return  # MongoDB: nothing of ours to check
    assert plan["filterPushdown"] is pushed
    assert odd_docs.find({"$and": [flt]}).explain()["filterPushdown"] is False


def test_range_pushdown_in_updates_and_deletes(probe_db: Any) -> None:
    """update and delete read through the same backend query: the same rows, no fewer."""
    odd_docs = _insert_odd_docs(probe_db["range_probe_writes"])
    res = odd_docs.update_many({"f": {"$gte": D3}}, {"$set": {"seen": True}})
    assert res.matched_count == 4
    assert {d["_id"] for d in odd_docs.find({"seen": True})} == {
        "d3",
        "d4",
        "arr_d1_d4",
        "arr_mixed",
    }
    odd_docs.insert_one({"_id": "doomed", "f": datetime(1900, 1, 1, tzinfo=UTC)})
    assert odd_docs.delete_many({"f": {"$lt": datetime(1950, 1, 1, tzinfo=UTC)}}).deleted_count == 1
    assert odd_docs.count_documents({}) == len(DOCS) + 2


def test_id_pushdown_beside_other_keys_in_updates(probe_db: Any) -> None:
    """The events' claims: an update of the ids this holder still owns changes those only."""
    coll = probe_db["id_owner_probe"]
    coll.insert_many([{"_id": f"e{i}", "owner": f"o{i % 3}"} for i in range(30)])
    ids = [f"e{i}" for i in range(10)] + ["gone"]
    res = coll.update_many({"_id": {"$in": ids}, "owner": "o1"}, {"$set": {"renewed": True}})
    assert res.matched_count == res.modified_count == 3  # e1, e4, e7
    assert {d["_id"] for d in coll.find({"renewed": True})} == {"e1", "e4", "e7"}
    assert coll.delete_many({"_id": {"$in": ids}, "owner": {"$ne": "o1"}}).deleted_count == 7
    assert coll.count_documents({}) == 23
    plan = coll.find({"_id": {"$in": ids}, "owner": "o1"}).explain()
    if "ferretdbVersion" in plan.get("serverInfo", {}):
        assert plan["filterPushdown"] is True


def _fake_ferretdb(tmp_path: Path, build: str, port: int) -> tuple[FerretDBService, int]:
    """A sleeping process recorded as the local FerretDB: argv[0] a binary of ``build``."""
    binary = tmp_path / "cache" / build / "bin" / "ferretdb"
    binary.parent.mkdir(parents=True)
    binary.symlink_to(sys.executable)
    settings = load_settings(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        mongo_url=f"mongodb://127.0.0.1:{port}/",
    )
    svc = FerretDBService(settings, echo=lambda m: None)
    argv = [str(binary), "-c", "import time; time.sleep(60)", "--listen-addr=127.0.0.1:27990"]
    pid = spawn(argv, log_file=tmp_path / "log", pid_file=svc.pid_file, env={}, cwd=tmp_path)
    # the check reads the process's /proc entry: wait until it shows the fake's own command
    # line (a CI run once read it as not ours right after the start; not reproduced since)
    deadline = time.monotonic() + 10.0
    while read_pid(svc.pid_file) != pid or argv[-1] not in cmdline(pid):
        if time.monotonic() > deadline:
            log = (tmp_path / "log").read_text(errors="replace")
            raise AssertionError(f"fake FerretDB {pid} not running as started: {log[:500]!r}")
        time.sleep(0.05)
    return svc, pid


@pytest.mark.parametrize(
    ("build", "port", "older"),
    [
        (f"ferretdb-1.24.2-p{PATCH_LEVEL - 1}", 27990, True),
        ("ferretdb-1.24.2", 27990, True),  # before patch levels were named
        (f"ferretdb-1.24.2-p{PATCH_LEVEL}", 27990, False),
        (f"ferretdb-1.24.2-p{PATCH_LEVEL + 1}", 27990, False),  # newer: never downgraded
        (f"ferretdb-1.23.0-p{PATCH_LEVEL - 1}", 27990, False),  # another version
        (f"ferretdb-1.24.2-p{PATCH_LEVEL - 1}", 27991, False),  # not the server on our port
    ],
)
def test_only_an_older_build_on_our_port_is_restarted(
    tmp_path: Path, build: str, port: int, older: bool
) -> None:
    svc, _ = _fake_ferretdb(tmp_path, build, port)
    try:
        assert svc._older_build() is older
    finally:
        stop_pid(svc.pid_file, grace=5)
