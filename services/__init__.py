"""Local servers on loopback: OpenSearch (+k-NN) from Maven Central, FerretDB from Go.

OpenSearch runs as one node or as a cluster of ``opensearch_nodes`` nodes (one install,
per-node ports, data and logs under the state dir).

``up`` is idempotent (healthy servers are left alone), health-waited, and raises
:class:`~opendisco.ServiceTimeout` with the server log tail; ``down`` leaves no process.
"""

from __future__ import annotations

from collections.abc import Callable

from opendisco._settings import Settings

from ._ferretdb import FerretDBService
from ._install import OpenSearchInstall
from ._opensearch import Node, OpenSearchService, Status, local_nodes
from ._scratch import FAST_FAULT_DETECTION, FAST_START, free_port_block, scratch_cluster

__all__ = [
    "FAST_FAULT_DETECTION",
    "FAST_START",
    "FerretDBService",
    "Node",
    "OpenSearchInstall",
    "OpenSearchService",
    "Status",
    "free_port_block",
    "local_nodes",
    "scratch_cluster",
    "services",
]


def services(
    settings: Settings, echo: Callable[[str], None] = print
) -> list[OpenSearchService | FerretDBService]:
    return [OpenSearchService(settings, echo), FerretDBService(settings, echo)]
