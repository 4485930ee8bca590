"""opendisco.queries: candidate generation composed inside OpenSearch from editable templates.

Templates (``templates/*.json``, one per surface) declare typed parameters and named sources;
:func:`render` turns them into search bodies without touching a client (golden-tested);
:func:`generate_candidates` runs a surface's sources in one ``_msearch`` and fuses them.
Read-only: the exposure counters the in-engine cap reads are kept by ``opendisco.signals``.
"""

from ._candidates import (
    Candidate,
    CandidateRequest,
    CandidateSet,
    explain_components,
    fuse,
    generate_candidates,
    request_for_user,
    request_params,
    with_source_fields,
)
from ._mustache import script_params, to_mustache
from ._params import REQUEST_PARAMS, ParamSpec, clip_terms
from ._template import (
    SURFACES,
    Template,
    load,
    render,
    surfaces,
    template_from_doc,
    template_version,
)
from ._validate import SourceCheck, example_params, script_id, store_templates, validate_templates

__all__ = [
    "REQUEST_PARAMS",
    "SURFACES",
    "Candidate",
    "CandidateRequest",
    "CandidateSet",
    "ParamSpec",
    "SourceCheck",
    "Template",
    "clip_terms",
    "example_params",
    "explain_components",
    "fuse",
    "generate_candidates",
    "load",
    "render",
    "request_for_user",
    "request_params",
    "script_id",
    "script_params",
    "store_templates",
    "surfaces",
    "template_from_doc",
    "template_version",
    "to_mustache",
    "validate_templates",
    "with_source_fields",
]
