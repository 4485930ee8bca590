"""Local servers on loopback: OpenSearch (+k-NN) from Maven Central, FerretDB from Go.

``up`` is idempotent (healthy servers are left alone), health-waited, and raises
:class:`~opendisco.ServiceTimeout` with the server log tail; ``down`` leaves no process.
"""

from __future__ import annotations

from collections.abc import Callable

from opendisco._settings import Settings

from ._ferretdb import FerretDBService
from ._opensearch import OpenSearchService, Status

__all__ = ["FerretDBService", "OpenSearchService", "Status", "services"]


def services(
    settings: Settings, echo: Callable[[str], None] = print
) -> list[OpenSearchService | FerretDBService]:
    return [OpenSearchService(settings, echo), FerretDBService(settings, echo)]
