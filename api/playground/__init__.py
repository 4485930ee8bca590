"""The relevance playground behind ``/playground`` (admin scope; routes in ``routes/playground``).

A relevance engineer picks a member and a surface and sees the served answer beside a draft's
(an edited params set or query template), explained item by item; saves drafts (MongoDB, with
author and time); evaluates a draft offline against what is served (a background job over the
``opendisco eval`` runner, paired standard errors); and promotes it to the next versioned
params file or template version. Nothing here changes what members are served: drafts become
serving artifacts only inside side-effect-free preview pipelines, which run every stage and
every hard rule of the served one.

Modules: ``_auth`` (admin key → session cookie + CSRF token), ``_drafts`` (checks and store),
``_compare`` (side-by-side answers), ``_members`` (member search), ``_jobs`` (evaluations),
``_promote`` (versioned files); ``static/`` is the page (plain JS and CSS, no build step).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .._runtime import Runtime
from ._auth import Member, authenticate, end_session, session_info, start_session
from ._compare import Pipelines, changes
from ._drafts import DraftIn, DraftStore, current_body, draft_artifacts
from ._jobs import EvalJobs, eval_settings
from ._members import find_members
from ._promote import arm_overrides, draft_experiment, promote, versions_dir

__all__ = [
    "DraftIn",
    "DraftStore",
    "EvalJobs",
    "Member",
    "Pipelines",
    "PlaygroundState",
    "arm_overrides",
    "authenticate",
    "changes",
    "current_body",
    "draft_artifacts",
    "draft_experiment",
    "end_session",
    "eval_settings",
    "find_members",
    "promote",
    "session_info",
    "start_session",
    "state_for",
    "versions_dir",
]


@dataclass
class PlaygroundState:
    """The playground's per-runtime parts (built on first use, on the runtime's clients)."""

    runtime: Runtime
    pipelines: Pipelines
    drafts: DraftStore
    jobs: EvalJobs


def state_for(request: Request, rt: Runtime) -> PlaygroundState:
    """The app's playground state for this runtime (rebuilt when the lifespan restarts)."""
    st: PlaygroundState | None = getattr(request.app.state, "playground", None)
    if st is None or st.runtime is not rt:
        st = PlaygroundState(rt, Pipelines(rt), DraftStore(rt.db), EvalJobs(rt))
        request.app.state.playground = st
    return st
