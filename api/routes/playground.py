"""``/playground``: the relevance playground (admin scope) — the page, its static files and
its JSON API (``/playground/api/...``). The logic lives in :mod:`opendisco.api.playground`."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import Field

from opendisco._backend import backend_errors
from opendisco._domain import ID_MAX_LENGTH, ID_PATTERN, USERS_COLLECTION, UserSurface
from opendisco._exceptions import InvalidInput, NotFound
from opendisco.experiments import DesignKind, ExperimentStore, Traffic
from opendisco.queries import load
from opendisco.serving import MAX_K

from .._body import StrictJSONRoute
from .._deps import RuntimeDep
from .._models import StrictModel
from .._runtime import Runtime
from ..playground import (
    DraftIn,
    Member,
    authenticate,
    changes,
    current_body,
    draft_artifacts,
    draft_experiment,
    end_session,
    find_members,
    promote,
    session_info,
    start_session,
    state_for,
)
from ..playground._compare import answer, draft_answer

__all__ = ["router"]

router = APIRouter(tags=["playground"], include_in_schema=False, route_class=StrictJSONRoute)

_STATIC = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
#: the page's own policy: its scripts and styles only, nothing from elsewhere
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _static(name: str) -> bytes:
    return resources.files("opendisco.api.playground").joinpath("static", name).read_bytes()


async def member(request: Request, rt: RuntimeDep) -> Member:
    return await authenticate(request, rt)


MemberDep = Annotated[Member, Depends(member)]


def _timeout(rt: Runtime) -> float:
    return max(10.0, 10 * rt.settings.api_deadline_ms / 1000)


@router.get("/playground", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """The page (no data in it: it signs in and calls the JSON API)."""
    return HTMLResponse(
        _static("index.html"),
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"},
    )


@router.get("/playground/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise NotFound(f"no static file {name!r}")
    return Response(_static(name), media_type=_STATIC[name])


class SignIn(StrictModel):
    key: str = Field(min_length=1, max_length=512)


@router.post("/playground/session")
async def sign_in(body: SignIn, request: Request, response: Response, rt: RuntimeDep) -> dict:
    """Exchange an admin API key for a session cookie and a CSRF token."""
    who = await start_session(rt, response, body.key, secure=request.url.scheme == "https")
    return session_info(who)


@router.get("/playground/session")
async def session(who: MemberDep) -> dict[str, Any]:
    """The signed-in engineer and the session's CSRF token (the page reloads it)."""
    return session_info(who)


@router.delete("/playground/session")
async def sign_out(request: Request, response: Response, rt: RuntimeDep, who: MemberDep) -> dict:
    await end_session(rt, request, response)
    return {"signed_out": True}


@router.get("/playground/api/state")
async def state(request: Request, rt: RuntimeDep, who: MemberDep) -> dict[str, Any]:
    """What is served (version, params document, template versions), the surfaces, and the
    parameters a draft may set (declared by each surface's template)."""
    current = state_for(request, rt).pipelines.current
    surfaces = [str(s.value) for s in UserSurface]
    return {
        "user": who.name,
        "version": rt.discovery.version,
        "artifacts": current.name,
        "surfaces": surfaces,
        "params": current_body(current, "params", "for_you"),
        "templates": {s: current_body(current, "template", s) for s in surfaces},
        "specs": {s: {n: p.describe() for n, p in load(s).specs.items()} for s in surfaces},
        "eval": {
            "dataset": rt.settings.playground_eval_dataset,
            "users": rt.settings.playground_eval_users,
        },
    }


@router.get("/playground/api/members")
async def members(
    rt: RuntimeDep, who: MemberDep, q: Annotated[str, Query(min_length=1, max_length=200)]
) -> dict[str, Any]:
    return {"members": await find_members(rt, q)}


class CompareIn(StrictModel):
    user_id: str = Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
    surface: UserSurface = UserSurface.for_you
    k: int = Field(20, ge=1, le=min(100, MAX_K), strict=True)
    draft: DraftIn | None = None
    draft_id: str | None = Field(None, max_length=64)


@router.post("/playground/api/compare")
async def compare(body: CompareIn, request: Request, rt: RuntimeDep, who: MemberDep) -> dict:
    """The member's current answer and the draft's (inline or saved), explained, with the
    position changes. A draft that does not validate is a 422 naming the problem."""
    st = state_for(request, rt)
    current = st.pipelines.current
    draft = body.draft
    if draft is None and body.draft_id:
        saved = await st.drafts.get(body.draft_id)
        draft = DraftIn(kind=saved["kind"], surface=saved["surface"], body=saved["body"])
    surface = str(body.surface.value)
    with backend_errors("member lookup failed"):
        if await rt.db[USERS_COLLECTION].find_one({"_id": body.user_id}, {"_id": 1}) is None:
            raise NotFound(f"no member {body.user_id!r}")
    timeout = _timeout(rt)
    cur = await answer(st.pipelines.get(current), body.user_id, surface, body.k, timeout)
    out: dict[str, Any] = {"user_id": body.user_id, "surface": surface, "current": cur}
    if draft is not None:
        arts = draft_artifacts(
            rt.settings, current, draft.kind, draft.surface, draft.body, label="draft"
        )
        dra = await draft_answer(st.pipelines.get(arts), body.user_id, surface, body.k, timeout)
        out["draft"] = dra
        out["changes"] = changes(
            [i["id"] for i in cur["items"]], [i["id"] for i in dra.get("items", [])]
        )
    return out


@router.post("/playground/api/validate")
async def validate(body: DraftIn, request: Request, rt: RuntimeDep, who: MemberDep) -> dict:
    """Check a draft like the file it would become (422 naming the problem)."""
    current = state_for(request, rt).pipelines.current
    arts = draft_artifacts(rt.settings, current, body.kind, body.surface, body.body, "draft")
    return {"ok": True, "artifacts": arts.name}


@router.get("/playground/api/drafts")
async def list_drafts(request: Request, rt: RuntimeDep, who: MemberDep) -> dict[str, Any]:
    return {"drafts": await state_for(request, rt).drafts.list()}


@router.post("/playground/api/drafts", status_code=201)
async def create_draft(body: DraftIn, request: Request, rt: RuntimeDep, who: MemberDep) -> dict:
    """Store a draft (checked first) with its author and time."""
    st = state_for(request, rt)
    current = st.pipelines.current
    draft_artifacts(rt.settings, current, body.kind, body.surface, body.body, "draft")
    return await st.drafts.create(body, who.as_author(), current.name)


@router.get("/playground/api/drafts/{draft_id}")
async def get_draft(draft_id: str, request: Request, rt: RuntimeDep, who: MemberDep) -> dict:
    st = state_for(request, rt)
    draft = await st.drafts.get(draft_id)
    draft["evaluations"] = await st.jobs.for_draft(draft_id)
    return draft


@router.put("/playground/api/drafts/{draft_id}")
async def update_draft(
    draft_id: str, body: DraftIn, request: Request, rt: RuntimeDep, who: MemberDep
) -> dict:
    st = state_for(request, rt)
    draft_artifacts(rt.settings, st.pipelines.current, body.kind, body.surface, body.body, "d")
    return await st.drafts.update(draft_id, body, who.as_author())


class EvalIn(StrictModel):
    users: int | None = Field(None, ge=2, le=5000, strict=True)
    k: int = Field(10, ge=1, le=100, strict=True)
    #: stored in the job document: a BSON integer has 8 bytes (a larger seed was a 500)
    seed: int = Field(0, ge=0, le=2**63 - 1, strict=True)


@router.post("/playground/api/drafts/{draft_id}/evaluations", status_code=202)
async def evaluate(
    draft_id: str, body: EvalIn, request: Request, rt: RuntimeDep, who: MemberDep
) -> dict:
    """Start the offline evaluation of the draft against what is served (a background job;
    poll ``/playground/api/jobs/{id}``)."""
    st = state_for(request, rt)
    draft = await st.drafts.get(draft_id)
    current = st.pipelines.current
    label = f"draft-{draft_id}"
    arts = draft_artifacts(
        rt.settings, current, draft["kind"], draft["surface"], draft["body"], label
    )
    return await st.jobs.start(
        draft,
        current,
        arts,
        who.as_author(),
        users=body.users or rt.settings.playground_eval_users,
        k=body.k,
        seed=body.seed,
    )


@router.get("/playground/api/jobs/{job_id}")
async def job(job_id: str, request: Request, rt: RuntimeDep, who: MemberDep) -> dict[str, Any]:
    return await state_for(request, rt).jobs.get(job_id)


@router.post("/playground/api/drafts/{draft_id}/promote")
async def promote_draft(draft_id: str, request: Request, rt: RuntimeDep, who: MemberDep) -> dict:
    """Write the draft as the next versioned params file / template version (once)."""
    st = state_for(request, rt)
    async with st.drafts.promoting(draft_id):
        draft = await st.drafts.get(draft_id)
        if draft["status"] != "draft":
            raise InvalidInput(f"draft {draft_id} was already promoted ({draft['promoted']})")
        current = st.pipelines.current
        draft_artifacts(  # re-checked: the served templates may have changed since it was saved
            rt.settings, current, draft["kind"], draft["surface"], draft["body"], "draft"
        )
        written = promote(rt.settings, draft, who.as_author(), current.name)
        return await st.drafts.mark_promoted(draft_id, {**written, "by": who.as_author()})


class ExperimentIn(StrictModel):
    """Start a params draft as an experiment's treatment arm (control: what is served)."""

    id: str | None = Field(
        None, pattern=ID_PATTERN, max_length=64, description="Default: pg-<draft id>."
    )
    design: DesignKind = DesignKind.user
    traffic: Traffic = 1.0
    layer: str = Field("default", pattern=r"^[A-Za-z0-9_\-]{1,64}$")


@router.post("/playground/api/drafts/{draft_id}/experiment", status_code=201)
async def experiment_from_draft(
    draft_id: str, body: ExperimentIn, request: Request, rt: RuntimeDep, who: MemberDep
) -> dict[str, Any]:
    """Create (not start) an experiment whose treatment arm is the draft: an operator starts
    it with ``opendisco experiments start``; nothing changes for live traffic before that."""
    st = state_for(request, rt)
    draft = await st.drafts.get(draft_id)
    current = st.pipelines.current
    draft_artifacts(  # re-checked against what is served now, as promote does
        rt.settings, current, draft["kind"], draft["surface"], draft["body"], "draft"
    )
    exp_id = body.id or f"pg-{draft_id}"
    exp = draft_experiment(
        draft, exp_id, design=body.design, traffic=body.traffic, layer=body.layer
    )
    created = await ExperimentStore(rt.db).create(exp)
    await st.drafts.add_experiment(draft_id, created.id)
    return {
        "experiment": created.model_dump(mode="json"),
        "draft": draft_id,
        "start": f"opendisco experiments start {created.id}",
    }
