"""Index templates in the cluster: render, diff against what is there, apply idempotently.

Each JSON file in ``index_templates/`` becomes a composable index template named
``<alias>-<name>`` matching ``<alias>-v*`` (``items``), so every versioned index gets the
declared settings and mappings. Its priority grows with the alias's length: ``items-vip-v*``
is also matched by ``items-v*``, and OpenSearch refuses overlapping patterns of one priority
(the second alias's template was refused) and gives an index the highest one's template.
``plan`` is a read-only diff; ``apply`` writes only templates that differ, and adds fields
that are new in the template to the live index in place (an additive mapping change is
compatible: documents written by the new code, which carry the field, are then accepted by
the ``strict`` mapping before the next reindex), and sets the live index's replica count to
the settings' (``index_replicas``: a dynamic setting, the cluster copies or drops replicas in
the background). Any other difference to the live index (including its number of primary
shards) needs ``opendisco reindex``.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from opensearchpy.exceptions import NotFoundError

from opendisco import index_templates
from opendisco._backend import backend_errors
from opendisco._settings import Settings

__all__ = [
    "TemplatePlan",
    "apply_templates",
    "new_fields",
    "normalise",
    "plan_templates",
    "set_replicas",
    "template_body",
]

PATTERNS = {"items": "{alias}-v*"}


@dataclass
class TemplatePlan:
    name: str
    exists: bool
    diff: str  # unified diff cluster → desired ("" when equal)
    live_index: str | None = None
    live_diff: str = ""  # mappings of the index behind the alias vs desired
    live_added: list[str] = field(default_factory=list)  # new fields mapped in place by apply
    live_replicas: tuple[int, int] | None = None  # (live, wanted) when they differ; apply sets
    live_shards: tuple[int, int] | None = None  # (live, wanted) when they differ: reindex

    @property
    def changed(self) -> bool:
        return bool(self.diff)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list):
        out[prefix] = [str(v) if not isinstance(v, dict | list) else v for v in value]
    else:
        out[prefix] = str(value).lower() if isinstance(value, bool) else str(value)


def normalise(settings_body: dict[str, Any], mappings: dict[str, Any]) -> dict[str, Any]:
    """Comparable form: flattened ``index.*`` settings as strings, mappings with scalars as str."""
    flat: dict[str, Any] = {}
    _flatten("", settings_body, flat)
    fixed = {}
    for k, v in flat.items():
        key = k if k.startswith("index.") else f"index.{k}"
        fixed[key] = v
    maps: dict[str, Any] = {}
    _flatten("", {k: v for k, v in mappings.items() if k != "_meta"}, maps)
    return {"settings": dict(sorted(fixed.items())), "mappings": dict(sorted(maps.items()))}


def _lines(value: dict[str, Any]) -> list[str]:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").splitlines(keepends=True)


def _diff(current: dict[str, Any] | None, desired: dict[str, Any], label: str) -> str:
    cur = _lines(current) if current is not None else []
    return "".join(difflib.unified_diff(cur, _lines(desired), f"cluster/{label}", f"repo/{label}"))


def template_body(name: str, settings: Settings) -> dict[str, Any]:
    rendered = index_templates.render(name, settings)
    return {
        "index_patterns": [
            PATTERNS.get(name, "{alias}-" + name + "*").format(alias=settings.index_alias)
        ],
        "priority": 100 + len(settings.index_alias),  # the longer alias's pattern wins
        "template": {"settings": rendered["settings"], "mappings": rendered["mappings"]},
        "_meta": {"managed_by": "opendisco", "template": name},
    }


def _template_name(name: str, settings: Settings) -> str:
    return f"{settings.index_alias}-{name}"


async def plan_templates(settings: Settings, client: Any) -> list[TemplatePlan]:
    plans = []
    with backend_errors("reading templates failed"):
        for name in index_templates.names():
            body = template_body(name, settings)
            desired = _desired(body)
            tname = _template_name(name, settings)
            try:
                resp = await client.indices.get_index_template(name=tname)
                tpl = resp["index_templates"][0]["index_template"]
                current = normalise(
                    tpl.get("template", {}).get("settings", {}),
                    tpl.get("template", {}).get("mappings", {}),
                )
                current["index_patterns"] = tpl.get("index_patterns")
                current["priority"] = tpl.get("priority")
                exists = True
            except NotFoundError:
                current, exists = None, False
            desired_full = {
                **desired,
                "index_patterns": body["index_patterns"],
                "priority": body["priority"],
            }
            plan = TemplatePlan(tname, exists, _diff(current, desired_full, tname))
            if name == "items":
                plan.live_index, plan.live_diff = await _live(client, settings, desired)
                if plan.live_index:
                    plan.live_replicas = await set_replicas(
                        client, plan.live_index, settings.replicas, dry_run=True
                    )
                    plan.live_shards = await _shards(client, plan.live_index, settings.shards)
            plans.append(plan)
    return plans


async def _index_setting(client: Any, index: str, name: str) -> int:
    got = await client.indices.get_settings(index=index, name=f"index.{name}")
    return int(got[index]["settings"]["index"][name])


async def _shards(client: Any, index: str, wanted: int) -> tuple[int, int] | None:
    live = await _index_setting(client, index, "number_of_shards")
    return None if live == wanted else (live, wanted)


async def set_replicas(
    client: Any, index: str, wanted: int, *, dry_run: bool = False
) -> tuple[int, int] | None:
    """Give a live index ``wanted`` replicas per shard; ``(live, wanted)`` when that was a
    change (None when it already had them or does not exist)."""
    with backend_errors(f"setting the replicas of {index} failed"):
        try:
            live = await _index_setting(client, index, "number_of_replicas")
        except NotFoundError:
            return None
        if live == wanted:
            return None
        if not dry_run:
            await client.indices.put_settings(
                index=index, body={"index": {"number_of_replicas": wanted}}
            )
    return live, wanted


async def _live(client: Any, settings: Settings, desired: dict[str, Any]) -> tuple[str | None, str]:
    try:
        aliases = await client.indices.get_alias(name=settings.index_alias)
    except NotFoundError:
        return None, ""
    index = sorted(aliases)[-1]
    mapping = (await client.indices.get_mapping(index=index))[index]["mappings"]
    current = normalise({}, mapping)["mappings"]
    return index, _diff(current, desired["mappings"], f"{index}/_mapping")


async def apply_templates(
    settings: Settings, client: Any, *, dry_run: bool = False
) -> list[TemplatePlan]:
    """Put every template that differs from the cluster (none when ``dry_run``)."""
    plans = await plan_templates(settings, client)
    if dry_run:
        return plans
    with backend_errors("applying templates failed"):
        for plan in plans:
            name = plan.name.removeprefix(f"{settings.index_alias}-")
            if plan.changed:
                await client.indices.put_index_template(
                    name=plan.name, body=template_body(name, settings)
                )
            if plan.live_index and plan.live_replicas:
                await set_replicas(client, plan.live_index, settings.replicas)
            if plan.live_index and plan.live_diff:
                plan.live_added = await _add_new_fields(client, settings, name, plan.live_index)
                if plan.live_added:
                    plan.live_index, plan.live_diff = await _live(
                        client, settings, _desired(template_body(name, settings))
                    )
    return plans


def _desired(body: dict[str, Any]) -> dict[str, Any]:
    return normalise(body["template"]["settings"], body["template"]["mappings"])


def new_fields(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Top-level properties of ``desired`` mappings that ``live`` does not map (pure)."""
    have = live.get("properties", {})
    return {k: v for k, v in desired.get("properties", {}).items() if k not in have}


async def _add_new_fields(client: Any, settings: Settings, name: str, index: str) -> list[str]:
    mappings = template_body(name, settings)["template"]["mappings"]
    live = (await client.indices.get_mapping(index=index))[index]["mappings"]
    add = new_fields(live, mappings)
    if add:
        await client.indices.put_mapping(index=index, body={"properties": add})
    return sorted(add)
