"""Find a member to preview: by id, or by profile text (BM25 over the member's profile item)."""

from __future__ import annotations

from typing import Any

from opendisco._backend import backend_errors
from opendisco._domain import USERS_COLLECTION, is_api_id

from .._runtime import Runtime

__all__ = ["find_members", "member_card"]

_CARD = ("gender", "age", "pref_genders", "pref_age_min", "pref_age_max", "interests")


def member_card(user: dict[str, Any], profile: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": user["_id"], **{k: user.get(k) for k in _CARD}}
    out["title"] = (profile or {}).get("title") or user.get("name") or user["_id"]
    return out


async def find_members(rt: Runtime, q: str, limit: int = 10) -> list[dict[str, Any]]:
    """The member whose id is ``q`` first, then owners of the profiles matching ``q``."""
    q = q.strip()
    users = rt.db[USERS_COLLECTION]
    found: list[dict[str, Any]] = []
    if is_api_id(q):
        with backend_errors("member lookup failed"):
            doc = await users.find_one({"_id": q})
        if doc is not None:
            found.append(doc)
    body = {
        "size": limit,
        "_source": ["title", "owner_id"],
        "query": {
            "bool": {
                "must": [
                    {"multi_match": {"query": q, "fields": ["title^2", "description", "tags"]}}
                ],
                "filter": [{"term": {"kind": "profile"}}, {"exists": {"field": "owner_id"}}],
            }
        },
    }
    with backend_errors("profile search failed"):
        resp = await rt.os_client.search(index=rt.settings.index_alias, body=body)
    profiles = {
        h["_source"]["owner_id"]: h["_source"] for h in resp["hits"]["hits"] if h.get("_source")
    }
    if found and found[0].get("profile_id"):  # the id hit's own profile, for its title
        with backend_errors("profile lookup failed"):
            got = await rt.os_client.mget(
                index=rt.settings.index_alias,
                body={"ids": [found[0]["profile_id"]]},
                params={"_source_includes": "title,owner_id"},
            )
        for doc in got.get("docs", []):
            if doc.get("found") and doc["_source"].get("owner_id") == found[0]["_id"]:
                profiles.setdefault(found[0]["_id"], doc["_source"])
    have = {d["_id"] for d in found}
    owners = [o for o in profiles if o not in have]
    if owners:
        with backend_errors("member lookup failed"):
            docs = await users.find({"_id": {"$in": owners}}).to_list(None)
        order = {o: i for i, o in enumerate(owners)}
        found += sorted(docs, key=lambda d: order.get(d["_id"], 0))
    return [member_card(d, profiles.get(d["_id"])) for d in found[:limit]]
