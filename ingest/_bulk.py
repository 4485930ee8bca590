"""Bulk writes with external versioning, as small pure pieces plus one async I/O loop.

Pure: ``Action`` → NDJSON lines (``encode_action``, orjson; the target index is the request
path, so actions are encoded once, off the event loop, by whoever prepares them), chunking
by count and bytes (``chunk_actions``), and the meaning of one per-item result (``classify``).
I/O: ``BulkWriter.write`` sends chunks, retries 429/5xx items (and whole-request
429/5xx/connection failures) with capped exponential backoff, and returns every action as
acknowledged (2xx, or 409 = a newer copy is there, or the write of an attempt whose answer
was lost, resends of the client's transport included) or rejected with OpenSearch's reason.
Anything still failing after the retries (``bulk_max_retries``, and ``retry_for`` seconds:
a rebuild's ``reindex_retry_seconds``) raises :class:`SearchBackendError` — nothing is
dropped silently; ``BulkWriter.versions`` reads a document its ``_mget`` refused again the
same way, never taking it for absent; ``patiently`` retries any idempotent engine call so.
Writes through an alias send ``require_alias``: a missing alias is an
:class:`IndexStateError`, never a new concrete index named like the alias.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

import orjson
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from opendisco._backend import backend_errors, index_missing, item_index_missing, whole_search
from opendisco._exceptions import IndexMissing, SearchBackendError
from opendisco._settings import Settings
from opendisco._transport import counting_sends

__all__ = [
    "Action",
    "BulkResult",
    "BulkWriter",
    "backoff_delay",
    "chunk_actions",
    "classify",
    "encode_action",
    "patiently",
    "transient",
]

Outcome = Literal["ok", "conflict", "retry", "reject"]
T = TypeVar("T")


@dataclass(frozen=True)
class Action:
    """One index or delete of an item with its external (MongoDB) version.

    ``data`` is the encoded NDJSON (``encode_action``), filled in by ``with_data`` where the
    action is prepared, so the event loop only joins bytes. ``settles`` says what its
    acknowledgement means for the document's dead letter (``_letters``): ``"version"`` it is
    indexed or deleted at ``version``, ``"any"`` it is gone (a hard delete: ``version`` is the
    index's), ``""`` nothing (the removal of a refused document's stale copy). ``refresh``:
    the document is sent again at the *same* version (``external_gte``) because something
    outside the item changed — its trained behaviour vector (``_behaviour``) — or its copy is
    removed at the version the index holds (a document whose version became unusable: its fix
    takes the next one); a 409 still means a newer version is there.
    """

    op: Literal["index", "delete"]
    id: str
    version: int
    source: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    data: bytes | None = field(default=None, compare=False, repr=False)
    settles: Literal["version", "any", ""] = field(default="version", compare=False)
    refresh: bool = False

    def with_data(self) -> Action:
        return replace(self, data=encode_action(self))

    def refreshed(self) -> Action:
        """This action sent at the same version again (``external_gte``), re-encoded."""
        return replace(self, refresh=True).with_data()


@dataclass
class BulkResult:
    ok: list[Action] = field(default_factory=list)
    absent: list[Action] = field(default_factory=list)  # deletes among ok that found nothing
    conflicts: list[Action] = field(default_factory=list)  # 409: a newer copy is there
    rejected: list[tuple[Action, str]] = field(default_factory=list)
    retries: int = 0

    @property
    def acknowledged(self) -> list[Action]:
        return self.ok + self.conflicts

    def merge(self, other: BulkResult) -> None:
        self.ok += other.ok
        self.absent += other.absent
        self.conflicts += other.conflicts
        self.rejected += other.rejected
        self.retries += other.retries


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_action(action: Action) -> bytes:
    """The NDJSON lines of ``action`` (no ``_index``: bulk requests name their index)."""
    kind = "external_gte" if action.refresh else "external"
    meta = {action.op: {"_id": action.id, "version": action.version, "version_type": kind}}
    if action.op == "index":
        return b"%b\n%b\n" % (orjson.dumps(meta), orjson.dumps(action.source, option=_NUMPY))
    return orjson.dumps(meta) + b"\n"


def chunk_actions(
    actions: Iterable[Action], max_docs: int, max_bytes: int
) -> Iterator[list[tuple[Action, bytes]]]:
    chunk: list[tuple[Action, bytes]] = []
    size = 0
    for action in actions:
        data = action.data if action.data is not None else encode_action(action)
        if chunk and (len(chunk) >= max_docs or size + len(data) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((action, data))
        size += len(data)
    if chunk:
        yield chunk


def _reason(error: Any) -> str:
    if not isinstance(error, Mapping):
        return str(error)
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text


def classify(op: str, item: Mapping[str, Any]) -> tuple[Outcome, str]:
    """Meaning of one bulk response item for an external-versioned ``op``."""
    status = int(item.get("status", 500))
    if 200 <= status < 300:
        return "ok", ""
    if item_index_missing(item):
        # the index itself not found: a node behind on the cluster state answers so about
        # one the others hold (nothing applied: sent again); past the budget, gone
        return "retry", _reason(item.get("error"))
    if status == 404 and op == "delete":
        return "ok", "not_found"  # already absent; the tombstone version is recorded
    if status == 409:
        return "conflict", _reason(item.get("error"))
    if status == 429 or status >= 500:
        return "retry", _reason(item.get("error"))
    return "reject", _reason(item.get("error"))


def backoff_delay(attempt: int, cap: float, base: float = 0.1) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 60)))


def transient(exc: BaseException) -> bool:
    """An engine failure worth retrying: a failed connection, or 429/502/503/504."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, OSConnectionError) or status in (429, 502, 503, 504)


def _spent(attempt: int, deadline: float, settings: Settings) -> bool:
    """Whether ``attempt`` retries used up the retry budget: ``bulk_max_retries`` and the
    time until ``deadline`` (``retry_for``), both."""
    return attempt >= settings.bulk_max_retries and time.monotonic() >= deadline


async def patiently(
    call: Callable[[], Awaitable[T]],
    settings: Settings,
    *,
    retry_for: float = 0.0,
    own_index: bool = False,
    whole: str | None = None,
) -> T:
    """``call()`` — an idempotent engine call — retried after :func:`transient` failures
    like a bulk: ``bulk_max_retries`` times and for at least ``retry_for`` seconds, with
    the bulk backoff; then (or on any other failure) its error is raised as it is.

    ``own_index``: the call is about an index the caller created (and holds), so an answer
    that it does not exist (:func:`index_missing`) came from a node behind on the cluster
    state (one resumed after a pause answers from the state it had) and is retried too.

    ``whole``: the call is a search or a count, what it reads (for the error): an answer
    only some shards gave (``_shards.failed``, ``timed_out``: ``whole_search``) is asked
    again like a transient failure, and when the budget is spent it is the
    :class:`SearchBackendError` naming the failed shards (before, a rebuild read such a count
    as the index's and threw the whole build away as short of documents)."""
    deadline = time.monotonic() + retry_for
    for attempt in itertools.count():
        try:
            answer = await call()
        except (OSConnectionError, TransportError) as exc:
            retry = transient(exc) or (own_index and index_missing(exc))
            if not retry or _spent(attempt, deadline, settings):
                raise
        else:
            try:
                if whole is not None:
                    whole_search(cast("Mapping[str, Any]", answer), whole)
                return answer
            except SearchBackendError:
                if _spent(attempt, deadline, settings):
                    raise
        await asyncio.sleep(backoff_delay(attempt, settings.bulk_backoff_max))
    raise AssertionError("unreachable")  # the loop returns or raises


class BulkWriter:
    """Writes actions into ``index``: a concrete index, or (``alias=True``) a single-index
    alias that must exist.

    A refused or failed bulk is retried ``bulk_max_retries`` times, and for at least
    ``retry_for`` seconds: a rebuild, which cannot resume, rides out an engine that answers
    429 for a while (``reindex_retry_seconds``); sync gives up sooner and backs off with its
    checkpoint kept (``run_sync``).

    Items answered ``index_not_found_exception`` are retried within the same budget: a node
    behind on the cluster state (one resumed after a pause) answers so about an index or
    alias the others hold (before, the first bulks after a hung node came back failed a
    rebuild, and would have stopped a sync worker for good). Still missing once the budget
    is spent, the target is gone: :class:`IndexMissing`."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        index: str,
        *,
        alias: bool = False,
        retry_for: float = 0.0,
    ) -> None:
        self.client = client
        self.settings = settings
        self.index = index
        self.retry_for = retry_for
        self.params: dict[str, str] = {"filter_path": "items.*.status,items.*.error"}
        if alias:
            self.params["require_alias"] = "true"

    async def _send(self, body: bytes) -> tuple[dict[str, Any], bool]:
        """The engine's answer to ``body``, and whether an earlier attempt of it may have been
        applied: it failed after it was sent (a timeout, a lost connection, a 502/503/504 of
        whatever stands between); a 429 was refused before anything was done. The client's
        transport sends a request again by itself after a cut connection (``max_retries``)
        and answers as if it had been sent once: its sends are counted
        (``counting_sends``), else that resend's 409s were taken for another writer's."""
        attempt = 0
        resent = False
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                with counting_sends() as sends:
                    resp = await self.client.bulk(body=body, index=self.index, params=self.params)
                return resp, resent or sends.count > 1
            except (OSConnectionError, TransportError) as exc:
                if not transient(exc) or _spent(attempt, deadline, self.settings):
                    raise SearchBackendError(f"bulk request failed: {exc}") from exc
                resent = resent or getattr(exc, "status_code", None) != 429
                await asyncio.sleep(backoff_delay(attempt, self.settings.bulk_backoff_max))
                attempt += 1

    async def versions(self, ids: list[str]) -> dict[str, int]:
        """``id -> _version`` of the documents ``index`` holds among ``ids`` (realtime).

        A document the answer carries an error for (a shard's get queue full) is not known
        to be absent: it is read again like a refused bulk item, and still failing raises
        :class:`SearchBackendError` — taken for absent, its hard delete was never sent."""
        held: dict[str, int] = {}
        pending, reason = list(ids), ""
        for attempt in range(self.settings.bulk_max_retries + 1):
            if not pending:
                return held
            if attempt:
                await asyncio.sleep(backoff_delay(attempt, self.settings.bulk_backoff_max))
            with backend_errors(f"reading versions from {self.index} failed"):
                resp = await patiently(
                    lambda ids=pending: self.client.mget(
                        index=self.index, body={"ids": ids}, _source=False
                    ),
                    self.settings,
                    retry_for=self.retry_for,
                )
            pending = []
            for doc in resp.get("docs", []):
                if doc.get("error") is not None:
                    pending.append(doc["_id"])
                    reason = _reason(doc["error"])
                elif doc.get("found"):
                    held[doc["_id"]] = int(doc["_version"])
        if not pending:
            return held
        raise SearchBackendError(
            f"reading versions from {self.index}: {len(pending)} documents still failing"
            f" after {self.settings.bulk_max_retries} retries: {reason}"
        )

    async def _settle_deletes(self, deletes: list[Action], result: BulkResult) -> None:
        """Deletes answered 409 after an attempt of theirs may have landed: acknowledged when
        the document is absent now (the 409 was the landed delete's own tombstone; before,
        a hard delete's dead letter stayed open and the delete was counted as a conflict),
        conflicts when the index holds it (a newer copy came back)."""
        if not deletes:
            return
        held = await self.versions([action.id for action in deletes])
        for action in deletes:
            (result.conflicts if action.id in held else result.ok).append(action)

    async def write(self, actions: Iterable[Action]) -> BulkResult:
        result = BulkResult()
        for chunk in chunk_actions(
            actions, self.settings.bulk_batch_size, self.settings.bulk_max_bytes
        ):
            result.merge(await self._write_chunk(chunk))
        return result

    async def _write_chunk(self, chunk: list[tuple[Action, bytes]]) -> BulkResult:
        result = BulkResult()
        pending = chunk
        last_reason = ""
        # actions an attempt may have applied although its answer never came: their 409 on a
        # later attempt (this one's resend, or a retry of an item the resend refused 429) is
        # most likely that attempt's write
        landed: set[int] = set()
        # deletes such an attempt may have applied, answered 409 by a later one: the 409 of
        # a delete is its own tombstone's when the document is now absent (read below)
        maybe_deleted: list[Action] = []
        deadline = time.monotonic() + self.retry_for
        for attempt in itertools.count():
            if attempt:
                result.retries += len(pending)
                await asyncio.sleep(backoff_delay(attempt, self.settings.bulk_backoff_max))
            resp, resent = await self._send(b"".join(data for _, data in pending))
            if resent:
                landed.update(id(action) for action, _ in pending)
            items = resp.get("items", [])
            if len(items) != len(pending):
                raise SearchBackendError(
                    f"bulk answered {len(items)} items for {len(pending)} actions"
                )
            retry: list[tuple[Action, bytes]] = []
            missing = 0  # of them answered that the index does not exist
            for (action, data), item in zip(pending, items, strict=True):
                answer = next(iter(item.values()))
                outcome, reason = classify(action.op, answer)
                if outcome == "ok":
                    result.ok.append(action)
                    if reason == "not_found":
                        result.absent.append(action)
                elif outcome == "conflict" and id(action) in landed and action.op == "index":
                    # the index holds this version: most likely the earlier attempt, which
                    # landed although its answer was lost (a reindex counts it as indexed)
                    result.ok.append(action)
                elif outcome == "conflict" and id(action) in landed:
                    maybe_deleted.append(action)
                elif outcome == "conflict":
                    result.conflicts.append(action)
                elif outcome == "retry":
                    retry.append((action, data))
                    missing += item_index_missing(answer)
                    last_reason = reason
                else:
                    result.rejected.append((action, reason))
            if not retry:
                await self._settle_deletes(maybe_deleted, result)
                return result
            if _spent(attempt, deadline, self.settings):
                if missing == len(retry):
                    raise IndexMissing(f"bulk into {self.index}: {last_reason}")
                raise SearchBackendError(
                    f"{len(retry)} bulk items still failing after {attempt} retries: {last_reason}"
                )
            pending = retry
        raise AssertionError("unreachable")  # the loop returns or raises
