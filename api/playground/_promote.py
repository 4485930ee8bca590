"""Promote a draft to a new versioned artifact, numbered like ``opendisco tune``'s.

A params draft becomes the next ``params-v<N>.json`` (:func:`opendisco.eval._tune.write_version`,
the file ``tune`` writes and :func:`opendisco.serving.load_params` reads); a template draft the
next ``template-<surface>-v<N>.json`` (:func:`opendisco._versions.write_next_version`, read by
:func:`opendisco.serving.load_template`). Files are created, never overwritten. Serving one is a
deployment step, as for a tuned params file: name it in ``params_file`` / ``template_files``.

A params draft can instead become the treatment arm of an experiment (:func:`draft_experiment`:
control = what is served, treatment = the draft's overrides), created in ``draft`` status and
started by an operator (``opendisco experiments start``). A template draft is promoted first;
the version file it becomes can then be an arm's ``templates`` (a user/cluster/switchback
experiment: pair-level designs share the candidate generation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from opendisco._exceptions import InvalidInput, validation_problems
from opendisco._settings import Settings
from opendisco._versions import write_next_version
from opendisco.eval._tune import now_iso, write_version
from opendisco.experiments import Arm, Design, DesignKind, Experiment

__all__ = ["arm_overrides", "draft_experiment", "promote", "versions_dir"]


def versions_dir(settings: Settings) -> Path:
    """``playground_dir``; else beside the served params file (its series continues); else
    ``<state_dir>/versions``."""
    if settings.playground_dir is not None:
        return settings.playground_dir
    if settings.params_file is not None:
        return settings.params_file.parent
    return settings.state_dir / "versions"


def _meta(draft: dict[str, Any], author: dict[str, str], based_on: str) -> dict[str, Any]:
    return {
        "created_at": now_iso(),
        "source": "playground",
        "draft_id": draft["id"],
        "title": draft.get("title", ""),
        "author": author,
        "draft_author": draft.get("author"),
        "based_on": based_on,
    }


def promote(
    settings: Settings, draft: dict[str, Any], author: dict[str, str], based_on: str
) -> dict[str, Any]:
    """Write the draft as the next version; ``{"path", "file", "version", "serve"}``."""
    out = versions_dir(settings)
    meta = _meta(draft, author, based_on)
    body = draft["body"]
    if draft["kind"] == "params":
        path = write_version(
            out,
            {
                "target": "served",
                **meta,
                "template_params": body.get("template_params") or {},
                "rerank": body.get("rerank") or {},
            },
        )
        serve = f"OPENDISCO_PARAMS_FILE={path}"
    else:
        surface = draft["surface"]

        def write(fh: IO[str], version: int) -> None:
            doc = {"version": version, "surface": surface, **meta, "template": body}
            json.dump(doc, fh, indent=2, default=str)
            fh.write("\n")

        path = write_next_version(out, f"template-{surface}", ".json", write)
        serve = f"OPENDISCO_TEMPLATE_FILES='[\"{path}\"]'"
    version = int(json.loads(path.read_text())["version"])
    return {"path": str(path), "file": path.name, "version": version, "serve": serve}


def arm_overrides(draft: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~opendisco.experiments.Arm` overrides of a params draft (its template
    parameters and rerank overrides); a template draft cannot be an arm."""
    if draft["kind"] != "params":
        raise InvalidInput(
            "a template draft is not an arm itself: promote the template draft, then name its "
            "version file in an arm's templates"
        )
    body = draft["body"]
    return {"params": body.get("template_params") or {}, "rerank": body.get("rerank") or {}}


def draft_experiment(
    draft: dict[str, Any],
    exp_id: str,
    *,
    design: DesignKind = DesignKind.user,
    traffic: float = 1.0,
    layer: str = "default",
) -> Experiment:
    """An experiment with the served pipeline as control and the draft as treatment; the
    arm is checked like a params file (no arm reaches a hard-rule parameter)."""
    try:
        return Experiment(
            id=exp_id,
            name=draft.get("title") or f"playground draft {draft['id']}",
            layer=layer,
            traffic=traffic,
            arms=[Arm(name="control"), Arm(name="treatment", **arm_overrides(draft))],
            design=Design(kind=design),
        )
    except ValidationError as exc:
        raise InvalidInput(f"the experiment is invalid: {validation_problems(exc)}") from exc
