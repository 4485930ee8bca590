"""A throwaway local OpenSearch cluster for tests and benchmarks that kill nodes.

The shared servers (``opensearch_url`` of the developer's settings) are never touched: the
scratch cluster gets its own state dir (``<state_dir>-ha/<name>``), cluster name, free
loopback ports and a smaller heap; it shares one OpenSearch install per version
(``<state_dir>-ha/opensearch-<version>``, assembled once under a file lock) and is stopped
and deleted on exit.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping

from opendisco._exceptions import ServiceError
from opendisco._settings import Settings

from ._opensearch import TRANSPORT_OFFSET, OpenSearchService

__all__ = ["FAST_FAULT_DETECTION", "FAST_START", "free_port_block", "scratch_cluster"]

#: C1-only JIT: a 3-node cluster started in 22-28 s instead of 47-52 s and a killed node
#: rejoined in 15-26 s instead of 32-35 s (2 shared cores, load ~12); queries run slower, so
#: for tests that restart nodes, never for benchmarks
FAST_START = "-XX:TieredStopAtLevel=1"

#: a hung node (SIGSTOP) dropped from the cluster after ~3 missed 2 s checks (≈ 7 s) instead
#: of the defaults' 3 × 10 s (≈ 33 s), and a hung cluster manager given up as fast, for tests
#: that wait for the drop; benchmarks keep the defaults
FAST_FAULT_DETECTION = {
    f"cluster.fault_detection.{check}.{key}": value
    for check in ("follower_check", "leader_check")
    for key, value in (("interval", "1s"), ("timeout", "2s"), ("retry_count", "3"))
}


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int, low: int = 19200, high: int = 19700) -> int:
    """A port ``p`` with ``p .. p+n-1`` and ``p+TRANSPORT_OFFSET ..`` free (HTTP and transport
    of ``n`` nodes); random, so two sessions starting at once rarely pick the same block."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - n)
        ports = [base + i + off for i in range(n) for off in (0, TRANSPORT_OFFSET)]
        if all(_free(p) for p in ports):
            return base
    raise ServiceError(f"no {n} free HTTP/transport port pairs in {low}-{high}")


@contextlib.contextmanager
def scratch_cluster(
    settings: Settings,
    *,
    name: str,
    nodes: int = 3,
    heap: str = "512m",
    java_opts: str | None = None,
    node_options: Mapping[str, str] | None = None,
    echo: Callable[[str], None] = lambda m: None,
) -> Iterator[tuple[Settings, OpenSearchService]]:
    """Start a fresh ``nodes``-node cluster; yield settings that reach it and its service.
    ``java_opts`` replaces ``opensearch_java_opts`` (tests pass ``FAST_START``);
    ``node_options`` are more static node settings (e.g. ``FAST_FAULT_DETECTION``)."""
    root = settings.state_dir.with_name(settings.state_dir.name + "-ha")
    state = root / name
    shutil.rmtree(state, ignore_errors=True)
    port = free_port_block(nodes)
    scratch = settings.model_copy(
        update={
            "opensearch_url": f"http://127.0.0.1:{port}",
            "opensearch_nodes": nodes,
            "opensearch_transport_port": None,
            "opensearch_cluster_name": f"opendisco-{name}",
            "opensearch_heap": heap,
            "opensearch_java_opts": settings.opensearch_java_opts
            if java_opts is None
            else java_opts,
            "opensearch_home": root / f"opensearch-{settings.opensearch_version}",
            "state_dir": state,
            # three JVMs starting at once on a shared 2-core machine took up to ~3 min
            "startup_timeout": max(settings.startup_timeout, 600.0),
        }
    )
    svc = OpenSearchService(scratch, echo, node_options)
    try:
        svc.up()
        yield scratch, svc
    finally:
        svc.down()
        shutil.rmtree(state, ignore_errors=True)
