"""Reindex against real servers: alias swaps under continuous readers, retention, crash cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from typing import Any

import pytest
from ingest_support import OPENDISCO, worker_env
from opensearchpy.exceptions import NotFoundError

from opendisco import Settings, clients, index_templates
from opendisco.ingest import (
    CACHE_COLLECTION,
    Embedder,
    alias_targets,
    apply_templates,
    generate_marketplace,
    plan_templates,
    reindex,
    verify,
    versioned_indices,
    write_sample,
)


async def _reader(client: Any, alias: str, stop: asyncio.Event, log: list[Any]) -> None:
    body = {
        "size": 5,
        "track_total_hits": True,
        "query": {"multi_match": {"query": "coffee jazz hiking", "fields": ["title", "tags"]}},
        "_source": ["id"],
    }
    count_body = {"size": 0, "track_total_hits": True, "query": {"match_all": {}}}
    while not stop.is_set():
        try:
            total = (await client.search(index=alias, body=count_body))["hits"]["total"]["value"]
            hits = (await client.search(index=alias, body=body))["hits"]["hits"]
            log.append((total, len(hits)))
        except Exception as exc:  # the assertion is that there are none
            log.append(exc)
        await asyncio.sleep(0.01)


async def test_reindex_swaps_alias_under_continuous_readers(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    ingest_settings = ingest_settings.model_copy(update={"keep_versions": 1})
    client = clients.async_opensearch(ingest_settings)
    try:
        first = await reindex(ingest_settings, client=client, embedder=embedder)
        assert first.indexed == first.total == len(ingest_catalogue) and first.dead_lettered == 0
        stop, log = asyncio.Event(), []
        reader = asyncio.create_task(_reader(client, ingest_settings.index_alias, stop, log))
        await asyncio.sleep(0.2)
        second = await reindex(ingest_settings, client=client, embedder=embedder)
        third = await reindex(ingest_settings, client=client, embedder=embedder)
        await asyncio.sleep(0.2)
        stop.set()
        await reader
        errors = [x for x in log if isinstance(x, Exception)]
        assert not errors, errors[:3]
        assert len(log) >= 10
        assert all(total == len(ingest_catalogue) and n == 5 for total, n in log), set(log)
        # unchanged texts were never re-encoded
        assert second.encoded == third.encoded == 0
        assert third.cache_hits == len(ingest_catalogue)
        assert second.previous == [first.index] and third.previous == [second.index]
        assert await alias_targets(client, ingest_settings.index_alias) == [third.index]
        assert sorted(await versioned_indices(client, ingest_settings.index_alias)) == [
            second.index,
            third.index,
        ]
        assert first.index in third.removed
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


class Crash(RuntimeError):
    pass


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_crash_mid_build_keeps_old_alias_and_next_run_cleans_up(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    ingest_settings = ingest_settings.model_copy(update={"bulk_batch_size": 20})
    client = clients.async_opensearch(ingest_settings)
    try:
        good = await reindex(ingest_settings, client=client, embedder=embedder)

        def boom(done: int, total: int) -> None:
            if done >= 40:
                raise Crash("simulated crash mid-build")

        with pytest.raises(Crash):
            await reindex(ingest_settings, client=client, embedder=embedder, progress=boom)
        # and a build left by a process that died (kill -9): never aliased, state "building"
        orphan = f"{ingest_settings.index_alias}-v19990101000000000000"
        body = index_templates.render("items", ingest_settings)
        body["mappings"]["_meta"] = {
            "opendisco": {"state": "building", "pid": _dead_pid(), "host": socket.gethostname()}
        }
        await client.indices.create(index=orphan, body=body)
        indices = await versioned_indices(client, ingest_settings.index_alias)
        partial = [n for n, m in indices.items() if m.get("state") == "building"]
        assert orphan in partial and len(partial) == 2
        # the alias still serves the complete old index
        assert await alias_targets(client, ingest_settings.index_alias) == [good.index]
        await client.indices.refresh(index=ingest_settings.index_alias)
        assert (await client.count(index=ingest_settings.index_alias))["count"] == len(
            ingest_catalogue
        )

        report = await reindex(ingest_settings, client=client, embedder=embedder)
        assert set(partial) <= set(report.removed)
        left = await versioned_indices(client, ingest_settings.index_alias)
        assert all(m.get("state") == "complete" for m in left.values())
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_templates_apply_is_idempotent(ingest_settings: Settings) -> None:
    client = clients.async_opensearch(ingest_settings)
    try:
        plans = await plan_templates(ingest_settings, client)
        assert [p.name for p in plans] == [f"{ingest_settings.index_alias}-items"]
        assert plans[0].changed and not plans[0].exists and "+" in plans[0].diff
        await apply_templates(ingest_settings, client)
        again = await plan_templates(ingest_settings, client)
        assert not again[0].changed, again[0].diff
        dry = await apply_templates(
            ingest_settings.model_copy(update={"behaviour_dim": 16}), client, dry_run=True
        )
        assert '"32"' in dry[0].diff and '"16"' in dry[0].diff
        assert not (await plan_templates(ingest_settings, client))[
            0
        ].changed  # dry run wrote nothing
    finally:
        await client.close()


async def test_templates_of_an_alias_named_like_a_version_both_apply(
    ingest_settings: Settings,
) -> None:
    """``<alias>-v*`` also matches ``<alias>-vip-v…``: at one priority the second alias's
    template was refused (overlapping patterns). The longer alias's template has the higher
    priority, so both apply and each alias's builds get their own."""
    ours = ingest_settings.model_copy(update={"index_alias": f"{ingest_settings.index_alias}-tp"})
    other = ours.model_copy(update={"index_alias": f"{ours.index_alias}-vip", "behaviour_dim": 16})
    client = clients.async_opensearch(ingest_settings)
    try:
        await apply_templates(ours, client)
        await apply_templates(other, client)  # was: 400 illegal_argument_exception (overlap)
        for s in (ours, other):
            assert not (await plan_templates(s, client))[0].changed
            got = await client.transport.perform_request(
                "POST", f"/_index_template/_simulate_index/{s.index_alias}-v20261204000000"
            )
            props = got["template"]["mappings"]["properties"]
            assert props["behaviour"]["dimension"] == s.behaviour_dim  # its own template's
    finally:
        for s in (other, ours):
            with contextlib.suppress(NotFoundError):
                await client.indices.delete_index_template(name=f"{s.index_alias}-items")
        await client.close()


async def test_apply_maps_new_fields_into_the_live_index(ingest_settings: Settings) -> None:
    from opendisco.ingest import PACKED_FIELD
    from opendisco.ingest._templates import template_body

    body = template_body("items", ingest_settings)["template"]
    old = {**body["mappings"], "properties": dict(body["mappings"]["properties"])}
    del old["properties"][PACKED_FIELD]  # an index built before the field existed
    index = f"{ingest_settings.index_alias}-v0-old"
    client = clients.async_opensearch(ingest_settings)
    try:
        await client.indices.create(
            index=index,
            body={
                "settings": body["settings"],
                "mappings": old,
                "aliases": {ingest_settings.index_alias: {}},
            },
        )
        plan = (await plan_templates(ingest_settings, client))[0]
        assert plan.live_index == index and PACKED_FIELD in plan.live_diff
        applied = (await apply_templates(ingest_settings, client))[0]
        assert applied.live_added == [PACKED_FIELD] and not applied.live_diff
        # the strict mapping now accepts documents written by the new code
        await client.index(
            index=ingest_settings.index_alias, id="x", body={"id": "x", PACKED_FIELD: "AAA="}
        )
        again = (await apply_templates(ingest_settings, client))[0]
        assert not again.changed and not again.live_added and not again.live_diff
    finally:
        await client.indices.delete(index=index, ignore_unavailable=True)
        await client.close()


def test_cli_templates_and_verify_exit_codes(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]]
) -> None:
    from click.testing import CliRunner

    from opendisco.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["templates", "apply", "--dry-run"], obj=ingest_settings)
    assert res.exit_code == 0 and "would create" in res.output
    res = runner.invoke(cli, ["reindex", "--quiet"], obj=ingest_settings)
    assert res.exit_code == 0, res.output
    assert f"{len(ingest_catalogue)}/{len(ingest_catalogue)} indexed" in res.output
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 0 and "missing=0" in res.output
    client = clients.mongo(ingest_settings)
    try:
        client[ingest_settings.mongo_db][ingest_settings.items_collection].delete_one({"_id": "p5"})
    finally:
        client.close()
    res = runner.invoke(cli, ["verify"], obj=ingest_settings)
    assert res.exit_code == 1 and "extra: ['p5']" in res.output
    assert os.environ.get("OPENDISCO_INDEX_ALIAS") != ingest_settings.index_alias


async def test_warm_reindex_reads_each_vector_from_the_cache(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    model: Any,
    embedder: Embedder,
) -> None:
    client = clients.async_opensearch(ingest_settings)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)  # all texts cached
        fresh = Embedder(ingest_settings, model)  # a new process: empty in-memory cache
        try:
            warm = await reindex(
                ingest_settings.model_copy(update={"bulk_concurrency": 3, "bulk_batch_size": 20}),
                client=client,
                embedder=fresh,
            )
        finally:
            fresh.close()
        assert len(ingest_catalogue) > 3 * 20  # several bulks in flight
        assert warm.encoded == 0 and warm.indexed == len(ingest_catalogue) == warm.cache_hits
        assert warm.total == len(ingest_catalogue)
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        await client.close()


async def test_reindex_killed_midway_is_rebuilt_without_reencoding(
    ingest_settings: Settings, model: Any, mongo_db: Any
) -> None:
    """A reindex killed with -9 leaves a partial index; the next run drops it and rebuilds,
    re-encoding only the texts the killed run had not reached (the cache kept the rest)."""
    token = uuid.uuid4().hex[:8]  # texts no other test has encoded
    items, users = generate_marketplace(200, seed=5)
    for it in items:
        it["title"] = f"{it['title']} ({token})"
    write_sample(ingest_settings, items, users)
    cache = mongo_db[CACHE_COLLECTION]
    before = cache.count_documents({})
    proc = subprocess.Popen(
        [str(OPENDISCO), "reindex", "--quiet"],
        env=worker_env(ingest_settings, OPENDISCO_BULK_BATCH_SIZE="20"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while cache.count_documents({}) - before < 60 and time.monotonic() < deadline:
        assert proc.poll() is None, "the reindex ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # an insert the server was still applying lands before we count
    encoded_by_killed = cache.count_documents({}) - before
    assert 60 <= encoded_by_killed < 200
    client = clients.async_opensearch(ingest_settings)
    fresh = Embedder(ingest_settings, model)
    try:
        partial = await versioned_indices(client, ingest_settings.index_alias)
        assert [m.get("state") for m in partial.values()] == ["building"]
        report = await reindex(ingest_settings, client=client, embedder=fresh)
        assert set(partial) <= set(report.removed)  # the killed build is dropped
        assert report.encoded == 200 - encoded_by_killed and report.cache_hits == encoded_by_killed
        assert (await verify(ingest_settings, client=client)).ok
    finally:
        fresh.close()
        await client.close()


async def test_retention_and_cleanup_spare_an_alias_named_like_a_version(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """``<alias>-v*`` also matches the builds of an alias ``<alias>-vip``: a reindex of
    ``<alias>`` with ``keep_versions=0`` deleted the index ``<alias>-vip`` served (and the
    alias with it), and its cleanup deleted the other alias's build left by a dead process."""
    ours = ingest_settings.model_copy(update={"keep_versions": 0})
    other = ingest_settings.model_copy(update={"index_alias": f"{ours.index_alias}-vip"})
    client = clients.async_opensearch(ingest_settings)
    try:
        built = await reindex(other, client=client, embedder=embedder)
        orphan = f"{other.index_alias}-v19990101000000000000"
        body = index_templates.render("items", other)
        body["mappings"]["_meta"] = {
            "opendisco": {"state": "building", "pid": _dead_pid(), "host": socket.gethostname()}
        }
        await client.indices.create(index=orphan, body=body)
        await reindex(ours, client=client, embedder=embedder)
        report = await reindex(ours, client=client, embedder=embedder)
        assert report.removed and built.index not in report.removed, report.removed
        assert orphan not in report.removed
        assert await alias_targets(client, other.index_alias) == [built.index]
        assert sorted(await versioned_indices(client, other.index_alias)) == [orphan, built.index]
        assert sorted(await versioned_indices(client, ours.index_alias)) == [report.index]
        assert (await verify(other, client=client)).ok
    finally:
        await client.close()
