"""Index definitions kept as JSON files beside this loader (``importlib.resources``)."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from opendisco._exceptions import ConfigError
from opendisco._settings import Settings

__all__ = ["names", "raw", "render"]


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".json")
    )


@cache
def raw(name: str) -> dict[str, Any]:
    """The template file as written (comments under ``_comment`` included)."""
    try:
        text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"no index template {name!r}; have {names()}") from exc
    return json.loads(text)


def render(name: str, settings: Settings) -> dict[str, Any]:
    """Index body ready for ``indices.create``: comments dropped; vector dims, shards and
    replicas from settings."""
    body = copy.deepcopy(raw(name))
    body.pop("_comment", None)
    index = body.setdefault("settings", {}).setdefault("index", {})
    index["number_of_shards"] = settings.shards
    index["number_of_replicas"] = settings.replicas
    props = body.get("mappings", {}).get("properties", {})
    if "embedding" in props:
        props["embedding"]["dimension"] = settings.embedding_dim
    if "behaviour" in props:
        props["behaviour"]["dimension"] = settings.behaviour_dim
    return body
