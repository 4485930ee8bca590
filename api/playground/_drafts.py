"""Drafts: an edited params set or query template, checked like the files they would become,
stored in MongoDB (``playground_drafts``) with author and time.

A draft changes nothing served: it becomes :class:`~opendisco.serving.Artifacts` only inside
the playground (:func:`draft_artifacts`) — a params draft through
:meth:`Artifacts.with_params` (the params file's own check,
:func:`~opendisco.serving.check_params`), a template draft through
:func:`~opendisco.queries.template_from_doc` (the template parser, guarded by the shipped hard
filter) and a render with every clause switched on. Every problem is an
:class:`~opendisco.InvalidInput` naming it (422 with the message), never a 500.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from opendisco._backend import backend_errors
from opendisco._domain import USER_SURFACES
from opendisco._exceptions import (
    ConfigError,
    InvalidInput,
    NotFound,
    TemplateParamError,
)
from opendisco._settings import Settings
from opendisco._store import lease, leased_unless_atomic
from opendisco.queries import Template, example_params, load, render, template_from_doc
from opendisco.serving import Artifacts

from .._models import StrictModel

__all__ = [
    "DRAFTS",
    "MAX_DRAFT_BYTES",
    "DraftIn",
    "DraftStore",
    "current_body",
    "draft_artifacts",
]

DRAFTS = "playground_drafts"
#: leases on drafts being written (``draft-<id>``), where one update is not atomic
#: (``DraftStore.writing``); the playground's other leases are there too (``promote-<id>``)
DRAFT_LOCKS = "playground_locks"
#: the largest draft body accepted (a template is a few KB)
MAX_DRAFT_BYTES = 256_000
#: the deepest nesting of a draft body accepted (the shipped templates: 13 to 16 levels). The
#: request's JSON parser takes ~1000; the template's parser, renderer and store walk a body
#: recursively, and one nested 300-900 levels deep exceeded Python's recursion limit: a 500
MAX_DRAFT_DEPTH = 64
Kind = Literal["params", "template"]
SURFACE_NAMES = tuple(str(s.value) for s in USER_SURFACES)


class DraftIn(StrictModel):
    """A draft as the page sends it: what it edits and the edited JSON document."""

    kind: Kind
    surface: str = Field("for_you", description="The surface a template draft edits.")
    title: str = Field("", max_length=200)
    body: Any = Field(description="params: {template_params, rerank}; template: a surface doc")


def _check_body(body: Any) -> None:
    """The draft body nests at most :data:`MAX_DRAFT_DEPTH` levels, its texts (keys and
    values) are Unicode and its numbers finite. A lone surrogate (the JSON escape
    ``"\\ud800"``, which the request's parser takes) was stored, and then every answer
    holding the draft failed to encode: a 500, the draft unreadable. ``NaN``/``Infinity``
    (which the parser takes too) passed every check, were promoted as a file that is not
    JSON, and failed the source at the engine on every request. Walked without recursion."""
    todo: list[tuple[Any, int]] = [(body, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, Mapping | list):
            if depth > MAX_DRAFT_DEPTH:
                raise InvalidInput(f"the draft nests deeper than {MAX_DRAFT_DEPTH} levels")
            items = node.items() if isinstance(node, Mapping) else enumerate(node)
            for key, value in items:
                todo.append((key, depth))
                todo.append((value, depth + 1))
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidInput(
                "the draft holds a number that is not finite (NaN or Infinity): JSON has none, "
                "and the engine refuses the body"
            )
        elif isinstance(node, str):
            try:
                node.encode()
            except UnicodeEncodeError:
                raise InvalidInput(
                    f"the draft holds text that is not Unicode (a lone surrogate): {node!r:.60}"
                ) from None


def _check_shape(kind: str, surface: str, body: Any) -> None:
    if surface not in SURFACE_NAMES:
        raise InvalidInput(f"surface must be one of {list(SURFACE_NAMES)}, got {surface!r}")
    if not isinstance(body, Mapping):
        raise InvalidInput(f"the {kind} draft must be a JSON object")
    _check_body(body)
    if len(json.dumps(body, default=str)) > MAX_DRAFT_BYTES:
        raise InvalidInput(f"the draft is larger than {MAX_DRAFT_BYTES} bytes")


def draft_template(settings: Settings, surface: str, body: Any, label: str) -> Template:
    """A template draft parsed and rendered once with every clause on (``TemplateParamError``
    naming the problem when it does not parse or render)."""
    tpl = template_from_doc(surface, body, label=label)
    params = {k: v for k, v in example_params(surface, settings).items() if k in tpl.specs}
    try:
        render(surface, params, tpl)
    except TemplateParamError as exc:
        raise TemplateParamError(f"the template does not render: {exc}") from exc
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise TemplateParamError(f"the template does not render: {exc!r}") from exc
    return tpl


def draft_artifacts(
    settings: Settings, current: Artifacts, kind: str, surface: str, body: Any, label: str
) -> Artifacts:
    """The served artifacts with the draft in place (params or one surface's template)."""
    _check_shape(kind, surface, body)
    if kind == "params":
        return current.with_params(body, label)
    return current.with_template(draft_template(settings, surface, body, f"{surface}-{label}"))


def current_body(current: Artifacts, kind: str, surface: str) -> dict[str, Any]:
    """What a new draft starts from: the served params document, or the served template of
    ``surface`` (its version when one is served, else the shipped file)."""
    if kind == "params":
        return {"template_params": dict(current.params), "rerank": current.rerank.get_config()}
    tpl = current.templates.get(surface) or load(surface)
    return dict(tpl.raw)


def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("_id", "body_json")}
    out["id"] = doc["_id"]
    if "body_json" in doc:
        out["body"] = json.loads(doc["body_json"])
    for k in ("created_at", "updated_at"):
        if isinstance(out.get(k), datetime):
            out[k] = out[k].replace(tzinfo=out[k].tzinfo or UTC).isoformat()
    if isinstance(out.get("promoted"), Mapping) and isinstance(out["promoted"].get("at"), datetime):
        out["promoted"] = {**out["promoted"], "at": out["promoted"]["at"].isoformat()}
    return out


def _stored(body: Any) -> str:
    """The body as JSON text: a template's ``$param``/``$ref`` keys are not valid field names
    of a MongoDB document."""
    return json.dumps(body, sort_keys=False, separators=(",", ":"))


class DraftStore:
    """Drafts in MongoDB: create, update while unpromoted, list, get, mark promoted."""

    #: a write's lease on its draft outlives a crashed writer by this long
    lease_s = 10.0
    lock_wait_s = 10.0
    #: a promotion's (or an edit's) lease on its draft (:meth:`promoting`)
    promote_lease_s = 60.0
    promote_wait_s = 30.0

    def __init__(self, db: Any) -> None:
        self.db = db
        self.coll = db[DRAFTS]

    @contextlib.asynccontextmanager
    async def writing(self, draft_id: str) -> AsyncIterator[None]:
        """One write of the draft at a time where one update is not atomic: FerretDB 1.x
        rewrites the whole document, so of an edit, a promotion and experiments recorded at
        once on one draft the last written undid the others (an experiment lost, a promoted
        draft back to ``draft``: editable and promotable again). A lease on MongoDB would only
        cost round trips."""
        async with leased_unless_atomic(
            self.db,
            DRAFT_LOCKS,
            [f"draft-{draft_id}"],
            lease_s=self.lease_s,
            wait_s=self.lock_wait_s,
            what="draft",
        ):
            yield

    @contextlib.asynccontextmanager
    async def promoting(self, draft_id: str) -> AsyncIterator[None]:
        """A promotion of the draft (read, write the version file, mark it promoted) or an
        edit, one at a time: an edit landing between a promotion's read and its mark left a
        draft "promoted" whose body was not the one the version file holds."""
        async with lease(
            self.db[DRAFT_LOCKS],
            [f"promote-{draft_id}"],
            lease_s=self.promote_lease_s,
            wait_s=self.promote_wait_s,
            what="promote",
        ):
            yield

    async def create(self, draft: DraftIn, author: dict[str, str], based_on: str) -> dict:
        now = datetime.now(UTC)
        doc = {
            "_id": "d" + secrets.token_hex(6),
            "kind": draft.kind,
            "surface": draft.surface,
            "title": draft.title or f"{draft.kind} draft",
            "body_json": _stored(draft.body),
            "author": author,
            "based_on": based_on,
            "created_at": now,
            "updated_at": now,
            "status": "draft",
            "promoted": None,
        }
        with backend_errors("storing the draft failed"):
            await self.coll.insert_one(doc)
        return _public(doc)

    async def get(self, draft_id: str) -> dict[str, Any]:
        with backend_errors("reading the draft failed"):
            doc = await self.coll.find_one({"_id": draft_id})
        if doc is None:
            raise NotFound(f"no draft {draft_id!r}")
        return _public(doc)

    async def update(self, draft_id: str, draft: DraftIn, author: dict[str, str]) -> dict:
        async with self.promoting(draft_id):
            current = await self.get(draft_id)
            if current["status"] != "draft":
                raise InvalidInput(f"draft {draft_id} was promoted; start a new draft from it")
            fields = {
                "kind": draft.kind,
                "surface": draft.surface,
                "title": draft.title or current["title"],
                "body_json": _stored(draft.body),
                "author": author,
                "updated_at": datetime.now(UTC),
            }
            async with self.writing(draft_id):
                with backend_errors("updating the draft failed"):
                    await self.coll.update_one(
                        {"_id": draft_id, "status": "draft"}, {"$set": fields}
                    )
        return await self.get(draft_id)

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with backend_errors("listing drafts failed"):
            docs = await self.coll.find({}, {"body_json": 0}).to_list(length=None)
        docs.sort(key=lambda d: d.get("updated_at") or d.get("created_at"), reverse=True)
        return [_public(d) for d in docs[:limit]]

    async def add_experiment(self, draft_id: str, exp_id: str) -> dict[str, Any]:
        """Record that experiment ``exp_id`` tests this draft (the draft stays a draft)."""
        async with self.writing(draft_id):
            with backend_errors("recording the draft's experiment failed"):
                await self.coll.update_one(
                    {"_id": draft_id}, {"$addToSet": {"experiments": exp_id}}
                )
        return await self.get(draft_id)

    async def mark_promoted(self, draft_id: str, promoted: dict[str, Any]) -> dict[str, Any]:
        async with self.writing(draft_id):
            with backend_errors("marking the draft promoted failed"):
                res = await self.coll.update_one(
                    {"_id": draft_id, "status": "draft"},
                    {"$set": {"status": "promoted", "promoted": promoted}},
                )
        if res.matched_count != 1:
            raise InvalidInput(f"draft {draft_id} is not an unpromoted draft")
        return await self.get(draft_id)
