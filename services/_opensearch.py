"""OpenSearch on loopback: one node, or ``opensearch_nodes`` nodes forming one cluster.

Node ``i`` of a local cluster serves HTTP on ``opensearch_hosts[i]``'s port and transport on
``opensearch_transport_port + i`` (default HTTP port + 100), is named ``<cluster>-<i>``, keeps
its data, logs and pid file under the state dir, and finds the others through
``discovery.seed_hosts`` (every node's transport address). The first start of a fresh cluster
bootstraps it with ``cluster.initial_cluster_manager_nodes`` (every node, so any majority
elects a manager); later starts leave that setting out, as OpenSearch asks. A single node
keeps the layout it always had (``discovery.type=single-node``, data in
``<state_dir>/opensearch-data``).

``up`` starts only the nodes that are not running — so after a node is killed, ``up``
restarts it — and waits until every node has joined; ``down`` stops every node this state
dir has a pid file for; ``status`` reports each node and where the shards are.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from opendisco._exceptions import ServiceError
from opendisco._settings import Settings

from ._install import OpenSearchInstall
from ._process import alive, chown_tree, read_pid, spawn, stop_pid, tail, wait_until

__all__ = ["TRANSPORT_OFFSET", "Node", "OpenSearchService", "Status", "local_nodes"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: a cluster node's default transport port: its HTTP port + this
TRANSPORT_OFFSET = 100


@dataclass(frozen=True)
class Status:
    name: str
    healthy: bool
    detail: str
    lines: tuple[str, ...] = ()  # one per node, then shard allocation (clusters)


@dataclass(frozen=True)
class Node:
    """One local OpenSearch process: its name, addresses and files."""

    index: int
    name: str
    url: str
    http_port: int
    transport: str  # a port, or a range for a single node
    data: Path
    logs: Path
    console: Path
    pid_file: Path


def local_nodes(settings: Settings) -> list[Node]:
    state, n = settings.state_dir, settings.opensearch_nodes
    hosts = settings.opensearch_hosts
    if n == 1:
        port = httpx.URL(hosts[0]).port or 9200
        transport = str(settings.opensearch_transport_port or "9300-9400")
        return [
            Node(
                0,
                f"{settings.opensearch_cluster_name}-0",
                hosts[0],
                port,
                transport,
                state / "opensearch-data",
                state / "logs",
                state / "logs" / "opensearch-console.log",
                state / "run" / "opensearch.pid",
            )
        ]
    first = httpx.URL(hosts[0]).port or 9200
    base = settings.opensearch_transport_port or first + TRANSPORT_OFFSET
    return [
        Node(
            i,
            f"{settings.opensearch_cluster_name}-{i}",
            url,
            httpx.URL(url).port or 9200,
            str(base + i),
            state / "opensearch-data" / f"node-{i}",
            state / "logs" / f"opensearch-node-{i}",
            state / "logs" / f"opensearch-{i}-console.log",
            state / "run" / f"opensearch-{i}.pid",
        )
        for i, url in enumerate(hosts)
    ]


class OpenSearchService:
    name = "opensearch"

    def __init__(  # type: ignore[no-untyped-def]
        self, settings: Settings, echo=print, node_options: Mapping[str, str] | None = None
    ) -> None:
        self.s = settings
        self.echo = echo
        #: more static node settings (``-E``), e.g. a scratch cluster's fault detection
        self.node_options = dict(node_options or {})
        self.installer = OpenSearchInstall(settings, echo)
        self.nodes = local_nodes(settings)
        self.run_dir = settings.state_dir / "run"

    @property
    def home(self) -> Path:
        return self.installer.home

    @property
    def local(self) -> bool:
        return all(httpx.URL(u).host in _LOOPBACK for u in self.s.opensearch_hosts)

    @property
    def cluster(self) -> bool:
        return len(self.nodes) > 1

    # -- talking to it -------------------------------------------------------------
    def _get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (JSON) from the first node that answers."""
        error: Exception | None = None
        for url in self.s.opensearch_hosts:
            try:
                r = httpx.get(f"{url}{path}", params=params, timeout=3.0)
                r.raise_for_status()
                return r.json()
            except (httpx.HTTPError, ValueError) as exc:
                error = exc
        raise ServiceError(f"no OpenSearch node answers ({error})")

    def node_answers(self, node: Node) -> str | None:
        """The cluster name a node reports, None when it does not answer."""
        try:
            return str(httpx.get(node.url, timeout=2).json()["cluster_name"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def healthy(self) -> bool:
        """Yellow or green; for a local cluster, with every node joined."""
        params: dict[str, Any] = {"wait_for_status": "yellow", "timeout": "1s"}
        if self.cluster and self.local:
            params["wait_for_nodes"] = f">={len(self.nodes)}"
        try:
            health = self._get("/_cluster/health", **params)
        except ServiceError:
            return False
        return not health.get("timed_out", False)

    # -- running -----------------------------------------------------------------------
    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        user = self.s.service_user
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                check=True,
            )
            pw = pwd.getpwnam(user)
        for node in self.nodes:
            for path in (node.data, node.logs, node.pid_file.parent):
                path.mkdir(parents=True, exist_ok=True)
        for path in {self.s.state_dir, self.home}:  # other nodes may be running: files vanish
            chown_tree(path, pw.pw_uid, pw.pw_gid)
        self.s.state_dir.chmod(0o755)
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]

    def _argv(self, node: Node, bootstrap: bool) -> list[str]:
        argv = [
            str(self.home / "bin" / "opensearch"),
            "-Enetwork.host=127.0.0.1",
            f"-Ehttp.port={node.http_port}",
            f"-Etransport.port={node.transport}",
            f"-Epath.data={node.data}",
            f"-Epath.logs={node.logs}",
            f"-Ecluster.name={self.s.opensearch_cluster_name}",
            f"-Enode.name={node.name}",  # single node too: the name the start message gives
            "-Eaction.auto_create_index=false",
            "-Ecluster.routing.allocation.disk.threshold_enabled=false",
            "-Eknn.algo_param.index_thread_qty=2",
            *(f"-E{k}={v}" for k, v in self.node_options.items()),
        ]
        if not self.cluster:
            return [*argv, "-Ediscovery.type=single-node"]
        argv += [
            "-Ediscovery.seed_hosts=" + ",".join(f"127.0.0.1:{n.transport}" for n in self.nodes),
        ]
        if bootstrap:
            argv.append(
                "-Ecluster.initial_cluster_manager_nodes=" + ",".join(n.name for n in self.nodes)
            )
        return argv

    def start(self, node: Node, *, bootstrap: bool) -> int:
        """Spawn one node (not waiting for it); its pid."""
        node.data.mkdir(parents=True, exist_ok=True)
        node.logs.mkdir(parents=True, exist_ok=True)
        argv = [*self._run_as(), *self._argv(node, bootstrap)]
        return spawn(
            argv,
            log_file=node.console,
            pid_file=node.pid_file,
            env=self.installer.env(self.s.heap),
            cwd=self.home,
        )

    def up(self) -> str:
        if self.healthy():
            return f"already running at {', '.join(self.s.opensearch_hosts)}"
        if not self.local:
            raise ServiceError(f"OpenSearch at {self.s.opensearch_url} is not reachable")
        self.installer.install()
        # bootstrap only a cluster none of whose nodes has ever started
        fresh = not any((n.data / "nodes").exists() for n in self.nodes)
        started: dict[int, Node] = {}
        for node in self.nodes:
            if read_pid(node.pid_file) is not None:
                continue
            name = self.node_answers(node)
            if name is not None:
                if name != self.s.opensearch_cluster_name:
                    raise ServiceError(f"{node.url} is served by another cluster ({name})")
                continue
            self.echo(
                f"starting OpenSearch {self.s.opensearch_version} node {node.name} on {node.url}"
            )
            started[self.start(node, bootstrap=fresh and self.cluster)] = node

        def ready() -> bool:
            for pid, node in started.items():
                if not alive(pid):  # (its /proc cmdline is briefly empty while it execs)
                    raise ServiceError(
                        f"OpenSearch node {node.name} exited during startup; last lines of "
                        f"{node.console}:\n{tail(node.console)}"
                    )
            return self.healthy()

        try:
            wait_until(
                ready,
                name=f"OpenSearch ({len(self.nodes)} node{'s' * self.cluster})",
                timeout=self.s.startup_timeout,
                pid=None,
                log_file=next(iter(started.values()), self.nodes[0]).console,
            )
        except ServiceError as exc:
            if len(started) < 2:  # its log tail is in the message already
                raise
            logs = "\n".join(f"--- {n.console}\n{tail(n.console, 15)}" for n in started.values())
            raise type(exc)(f"{exc}\n{logs}") from exc  # ServiceTimeout stays one
        pids = ", ".join(f"{n.name} pid {pid}" for pid, n in started.items())
        return f"started at {', '.join(self.s.opensearch_hosts)} ({pids or 'already starting'})"

    def pid_files(self) -> list[Path]:
        """Every OpenSearch pid file of this state dir (also nodes of an earlier node count)."""
        return sorted(self.run_dir.glob("opensearch*.pid"))

    def down(self) -> str:
        files = self.pid_files()
        with ThreadPoolExecutor(max(1, len(files))) as pool:
            stopped = sum(pool.map(stop_pid, files))
        if not stopped:
            return "not running"
        return "stopped" if stopped == 1 else f"stopped {stopped} nodes"

    def signal(self, node: Node, sig: signal.Signals) -> int:
        """Send ``sig`` to one node's process (SIGKILL to crash it, SIGSTOP to hang it)."""
        pid = read_pid(node.pid_file)
        if pid is None:
            raise ServiceError(f"node {node.name} is not running")
        os.kill(pid, sig)
        return pid

    # -- reporting ---------------------------------------------------------------------
    def status(self) -> Status:
        try:
            root = self._get("/")
            health = self._get("/_cluster/health")
            plugins = self._get("/_cat/plugins", format="json")
            cat_nodes = self._get(
                "/_cat/nodes", format="json", h="name,http_address,cluster_manager,heap.percent"
            )
            shards = self._get("/_cat/shards", format="json", h="prirep,state,node")
        except ServiceError as exc:
            return Status(self.name, False, f"{self.s.opensearch_url}: {exc}")
        names = sorted({p["component"] for p in plugins})
        # a node that just died can stay in the cluster state for a while (until the
        # manager's follower checks remove it, longer after an election): no stats then
        joined = {n["name"]: n for n in cat_nodes if n.get("heap.percent") is not None}
        want = len(self.nodes) if self.local else 1
        healthy = health.get("status") in {"green", "yellow"} and len(joined) >= want
        detail = (
            f"OpenSearch {root['version']['number']} at {', '.join(self.s.opensearch_hosts)}, "
            f"cluster {health.get('cluster_name')} {health.get('status')}, "
            f"{len(joined)} node{'s' * (len(joined) != 1)}, plugins: {', '.join(names) or 'none'}"
        )
        per_node = Counter(
            (s.get("node"), s["prirep"]) for s in shards if s["state"] != "UNASSIGNED"
        )
        lines = []
        expected = [n.name for n in self.nodes] if self.local and self.cluster else []
        listed = {n["name"] for n in cat_nodes}
        for name in sorted(listed | set(expected)):
            node = joined.get(name)
            if node is None:
                why = "not answering" if name in listed else "not in the cluster"
                lines.append(f"node {name}: DOWN ({why})")
                continue
            manager = " (cluster manager)" if node.get("cluster_manager") == "*" else ""
            lines.append(
                f"node {name} {node.get('http_address')}{manager}: heap {node['heap.percent']}%, "
                f"{per_node[(name, 'p')]} primaries, {per_node[(name, 'r')]} replicas"
            )
        lines.append(
            f"shards: {health['active_shards']} active ({health['active_primary_shards']} "
            f"primaries), {health['relocating_shards']} relocating, "
            f"{health['initializing_shards']} initializing, {health['unassigned_shards']} "
            "unassigned"
        )
        return Status(self.name, healthy, detail, tuple(lines))

    def log_path(self) -> Path:
        return self.nodes[0].console
