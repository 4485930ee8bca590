"""Run every template against the cluster, and store them as OpenSearch search templates."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors
from opendisco._domain import KINDS
from opendisco._settings import Settings
from opendisco.signals import exposure_index

from ._mustache import to_mustache
from ._template import load, render, surfaces

__all__ = ["SourceCheck", "example_params", "script_id", "store_templates", "validate_templates"]


@dataclass
class SourceCheck:
    surface: str
    source: str
    ok: bool
    hits: int = 0
    took_ms: int = 0
    error: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _unit(dim: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def example_params(surface: str, settings: Settings, item_id: str = "x") -> dict[str, Any]:
    """Parameters that switch on every source and every optional clause of ``surface``."""
    specs = load(surface).specs
    full: dict[str, Any] = {
        "k": 10,
        "now": datetime.now(UTC),
        "index": settings.index_alias,
        "exclude_ids": ["__none__"],
        "exposure_index": exposure_index(settings),
        "kinds": sorted(KINDS),
        "viewer_gender": "f",
        "viewer_age": 30,
        "viewer_pref_genders": ["m", "f", "x"],
        "viewer_pref_age_min": 18,
        "viewer_pref_age_max": 99,
        "location": {"lat": 52.52, "lon": 13.405},
        "user_vector": _unit(settings.embedding_dim, 1),
        "item_vector": _unit(settings.embedding_dim, 2),
        "query_vector": _unit(settings.embedding_dim, 3),
        "behaviour_vector": _unit(settings.behaviour_dim, 4),
        "interests": ["jazz", "hiking"],
        "interests_text": "jazz hiking",
        "query_text": 'jazz "quoted" {"braces": 1} {{mustache}}',
        "item_id": item_id,
        "graph_ids": [item_id, "__none__"],
        "graph_weights": [2.0, 1.0],
        "itemsim_ids": [item_id, "__none__"],
        "itemsim_weights": [0.5, 0.1],
        "mutual_ids": [item_id, "__none__"],
        "mutual_weights": [2.0, 1.0],
        "liker_ids": ["__none__"],
        "trending_ids": [item_id, "__none__"],
        "trending_weights": [3.0, 1.0],
    }
    return {k: v for k, v in full.items() if k in specs}


async def _any_id(client: AsyncOpenSearch, settings: Settings) -> str:
    resp = await client.search(
        index=settings.index_alias, body={"size": 1, "_source": False, "query": {"match_all": {}}}
    )
    hits = resp["hits"]["hits"]
    return hits[0]["_id"] if hits else "__none__"


async def validate_templates(client: AsyncOpenSearch, settings: Settings) -> list[SourceCheck]:
    """Render every surface with every clause switched on and run each source once (the
    exposure counters index must exist: ``ExposureStore.ensure``)."""
    with backend_errors(f"cannot read {settings.index_alias}"):
        anchor = await _any_id(client, settings)
    checks: list[SourceCheck] = []
    for surface in surfaces():
        rendered = render(surface, example_params(surface, settings, anchor))
        names = list(rendered["sources"])
        body: list[dict[str, Any]] = []
        for name in names:
            body += [{"index": settings.index_alias}, rendered["sources"][name]]
        with backend_errors(f"{surface}: _msearch failed"):
            resp = await client.msearch(body=body)
        for name, r in zip(names, resp["responses"], strict=True):
            if "error" in r:
                err = r["error"]
                reason = (err.get("root_cause") or [err])[0].get("reason", str(err))
                checks.append(
                    SourceCheck(
                        surface, name, False, error=str(reason)[:300], version=rendered["version"]
                    )
                )
            else:
                checks.append(
                    SourceCheck(
                        surface,
                        name,
                        True,
                        hits=len(r["hits"]["hits"]),
                        took_ms=int(r.get("took", 0)),
                        version=rendered["version"],
                    )
                )
        for name in rendered["skipped"]:
            checks.append(
                SourceCheck(
                    surface,
                    name,
                    False,
                    error="skipped: required parameter unset",
                    version=rendered["version"],
                )
            )
    return checks


def script_id(surface: str, source: str, prefix: str = "opendisco") -> str:
    return f"{prefix}-{surface}-{source}"


async def store_templates(client: AsyncOpenSearch, prefix: str = "opendisco") -> dict[str, str]:
    """Put every (surface, source) as a mustache search template; returns id -> version.

    Call them with ``script_params(surface, params)`` (values plus ``has_<name>`` flags).
    """
    out: dict[str, str] = {}
    for surface in surfaces():
        tpl = load(surface)
        for source in tpl.sources:
            sid = script_id(surface, source, prefix)
            with backend_errors(f"storing {sid} failed"):
                await client.put_script(
                    id=sid,
                    body={"script": {"lang": "mustache", "source": to_mustache(surface, source)}},
                )
            out[sid] = tpl.version
    return out
