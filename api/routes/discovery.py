"""``/v1`` lists: a member's recommendations (paged by signed cursors), similar items, search.

Each route checks its inputs, calls the pipeline through :meth:`Runtime.guarded` (deadline,
breaker, fallback) and answers with :func:`_respond` (impression logged, next cursor signed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from opendisco._domain import UserSurface
from opendisco.signals import ServedList

from .._body import StrictJSONRoute
from .._deps import (
    CursorQ,
    Explain,
    ItemPath,
    K,
    QueryQ,
    ReadKey,
    RuntimeDep,
    SurfaceQ,
    UserPath,
    UserQ,
    require_explain,
)
from .._errors import ERRORS, request_id
from .._keys import ApiKey
from .._models import RecommendationsResponse
from .._runtime import Answer, Runtime

__all__ = ["router"]

router = APIRouter(tags=["discovery"], route_class=StrictJSONRoute)

_READ: dict[str, Any] = {
    "response_model": RecommendationsResponse,
    "responses": ERRORS,
    "response_model_exclude_none": False,
}


def _respond(
    rt: Runtime,
    request: Request,
    key: ApiKey,
    surface: str,
    user_id: str | None,
    answer: Answer,
    served_before: list[str] | None = None,
) -> dict[str, Any]:
    """The response body; logs a fallback answer (the pipeline's answers, an empty one too, by its
    served-list side effect) and, for paged surfaces (``served_before`` not None), signs the
    cursor of the next page (none after an empty page the engine answered)."""
    rid = request_id(request)
    ids = answer.ids
    next_cursor = None
    # an empty page the engine answered: nothing left to serve (a degraded one: maybe later)
    if served_before is not None and (ids or answer.degraded):
        next_cursor = rt.cursors.encode(user_id or "", surface, [*served_before, *ids])
    if not answer.counted:  # the pipeline counts its pages when it picks them (serving._caps)
        rt.discovery.record_served(answer.items, rid)  # exposure of the members shown (batched)
    log = rt.discovery.served_log
    if log is not None and not answer.logged:  # the fallback's lists are logged here
        n = len(ids)
        log.log(
            ServedList(
                request_id=rid,
                at=datetime.now(UTC),
                user_id=user_id,
                surface=surface,
                requested_surface=surface,
                version=answer.version,
                degraded=answer.degraded,
                k=n,
                feature_names=(),
                X=None,
                ids=ids,
                shown=list(range(n)),
                propensity=[1.0] * n,
                policy={"kind": "fallback"},
            )
        )
    return {
        "request_id": rid,
        "template_version": answer.version,
        "surface": surface,
        "degraded": answer.degraded,
        "degraded_rules": answer.degraded_rules,
        "items": answer.items,
        "next_cursor": next_cursor,
        "explain": answer.explain,
        "experiments": answer.experiments,
    }


@router.get("/v1/users/{user_id}/recommendations", **_READ)
async def recommendations(
    request: Request,
    rt: RuntimeDep,
    key: ReadKey,
    user_id: UserPath,
    surface: SurfaceQ = UserSurface.for_you,
    k: K = 20,
    cursor: CursorQ = None,
    explain: Explain = False,
) -> dict[str, Any]:
    """Personal recommendations; pages of one session (``cursor``) never repeat an item."""
    require_explain(key, explain)
    name = str(surface.value)
    served = rt.cursors.decode(cursor, user_id, name) if cursor else []
    answer = await rt.guarded(
        name,
        lambda: rt.discovery.recommend(
            user_id,
            surface=name,
            k=k,
            exclude=tuple(served),
            explain=explain,
            request_id=request_id(request),
        ),
        k,
        user_id=user_id,
        exclude=served,
        explain=explain,
        request_id=request_id(request),
    )
    return _respond(rt, request, key, name, user_id, answer, served)


@router.get("/v1/items/{item_id}/similar", **_READ)
async def similar(
    request: Request,
    rt: RuntimeDep,
    key: ReadKey,
    item_id: ItemPath,
    k: K = 20,
    user_id: UserQ = None,
    explain: Explain = False,
) -> dict[str, Any]:
    """Items similar to ``item_id`` (optionally personalised for ``user_id``)."""
    require_explain(key, explain)
    answer = await rt.guarded(
        "similar",
        lambda: rt.discovery.similar(
            item_id, k, user_id=user_id, explain=explain, request_id=request_id(request)
        ),
        k,
        user_id=user_id,
        exclude=[item_id],
        explain=explain,
        request_id=request_id(request),
    )
    return _respond(rt, request, key, "similar", user_id, answer)


@router.get("/v1/search", **_READ)
async def search(
    request: Request,
    rt: RuntimeDep,
    key: ReadKey,
    q: QueryQ,
    user_id: UserQ = None,
    k: K = 20,
    explain: Explain = False,
) -> dict[str, Any]:
    """Hybrid (BM25 + k-NN) search, reranked for ``user_id`` when given."""
    require_explain(key, explain)
    answer = await rt.guarded(
        "search",
        lambda: rt.discovery.search(
            q, user_id=user_id, k=k, explain=explain, request_id=request_id(request)
        ),
        k,
        user_id=user_id,
        explain=explain,
        request_id=request_id(request),
    )
    return _respond(rt, request, key, "search", user_id, answer)
