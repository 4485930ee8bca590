"""Pure logic: schema validation, embedding text, index documents, bulk result meaning."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Code, DatetimeMS

from opendisco import DocumentInvalid, Settings
from opendisco.ingest import (
    Action,
    build_index_doc,
    chunk_actions,
    classify,
    content_hash,
    embedding_text,
    encode_action,
    generate_marketplace,
    to_index_doc,
    validate_item,
)
from opendisco.ingest._templates import normalise

GOOD: dict[str, Any] = {
    "_id": "p1",
    "kind": "profile",
    "title": "Ana, 31 — jazz & hiking.",
    "description": "Weekend hiker.",
    "tags": ["jazz", "hiking"],
    "category": "music",
    "owner_id": "u1",
    "created_at": datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    "updated_at": datetime(2025, 2, 2, tzinfo=UTC),
    "version": 3,
    "location": {"lat": 38.7, "lon": -9.1},
    "popularity": 4.0,
    "quality": 0.8,
    "gender": "f",
    "age": 31,
    "pref_genders": ["m"],
    "extra_annotation": {"by": "someone"},
}

DEEP: dict[str, Any] = {"leaf": 1}
for _ in range(12):
    DEEP = {"n": DEEP}

BAD = {
    "nan": ({"popularity": float("nan")}, "popularity"),
    "inf": ({"quality": float("inf")}, "quality"),
    "nan_in_vector": ({"behaviour": [float("nan")] + [0.1] * 31}, "behaviour"),
    "year_10000_int": ({"year": 10000}, "year"),
    "year_10000_date": ({"updated_at": DatetimeMS(253402300800000 + 86_400_000)}, "updated_at"),
    "wrong_type_number": ({"popularity": "very"}, "popularity"),
    "wrong_type_tags": ({"tags": "jazz"}, "tags"),
    "wrong_type_bool": ({"available": "yes"}, "available"),
    "keyword_40kb": ({"category": "x" * 40_000}, "category"),
    "tag_40kb": ({"tags": ["y" * 40_000]}, "tags[0]"),
    "id_too_long": ({"_id": "i" * 600}, "_id"),
    "id_not_string": ({"_id": 42}, "_id"),
    "deep_nesting": ({"extra_annotation": DEEP}, "extra_annotation"),
    "no_version": ({"version": None}, "version"),
    "unknown_kind": ({"kind": "spaceship"}, "kind"),
    "empty_title": ({"title": "   "}, "title"),
    "bad_location": ({"location": {"lat": 95.0, "lon": 0.0}}, "lat"),
    "zero_behaviour": ({"behaviour": [0.0] * 32}, "behaviour"),
    "behaviour_dims": ({"behaviour": [0.1] * 7}, "behaviour"),
    # BSON JavaScript code decodes to a str subclass (MongoDB stores it; FerretDB does not):
    # as ``kind`` it raised TypeError (unhashable) out of validation and stopped the batch
    "code_kind": ({"kind": Code("movie")}, "kind"),
    "code_title": ({"title": Code("Ana")}, "title"),
    "code_tag": ({"tags": [Code("jazz")]}, "tags[0]"),
    "code_id": ({"_id": Code("p1")}, "_id"),
    "pref_ages_inverted": ({"pref_age_min": 40, "pref_age_max": 30}, "pref_age_min"),
    # a hide of a profile blocks its member both ways through owner_id: without one it blocked
    # nobody (the hidden member was still shown the hider)
    "profile_without_owner": ({"owner_id": None}, "owner_id"),
    "profile_with_empty_owner": ({"owner_id": ""}, "owner_id"),
    # an owner no API call can name: its hide blocked an id no viewer has (" sb" is not sb)
    "owner_with_space": ({"owner_id": " sb"}, "owner_id"),
    "owner_with_nbsp": ({"owner_id": "sb\u00a0"}, "owner_id"),
}


def test_valid_item_is_normalised() -> None:
    item = validate_item(GOOD, behaviour_dim=32)
    assert item["_id"] == "p1" and item["version"] == 3
    assert item["available"] is True and item["deleted"] is False
    assert "extra_annotation" not in item
    naive = dict(GOOD, updated_at=datetime(2025, 2, 2))
    assert validate_item(naive)["updated_at"].tzinfo == UTC


def test_only_a_profiles_owner_must_be_a_member_id() -> None:
    listing = validate_item({**GOOD, "kind": "listing", "owner_id": "Acme Ltd"}, behaviour_dim=32)
    assert listing["owner_id"] == "Acme Ltd"


def test_a_deleted_profile_needs_no_owner() -> None:
    """A tombstone is applied (the profile taken out of the index) whatever else it lacks."""
    gone = validate_item({**GOOD, "owner_id": None, "deleted": True}, behaviour_dim=32)
    assert gone["deleted"] is True and gone["owner_id"] is None


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_bad_kind_is_rejected_with_its_field(kind: str) -> None:
    patch, field = BAD[kind]
    doc = {**copy.deepcopy(GOOD), **patch}
    with pytest.raises(DocumentInvalid) as err:
        validate_item(doc, behaviour_dim=32)
    assert str(err.value).startswith(field), str(err.value)


def test_embedding_text_and_index_doc() -> None:
    item = validate_item(GOOD)
    assert embedding_text(item) == "Ana, 31 — jazz & hiking. Weekend hiker. jazz, hiking"
    doc = to_index_doc(item, [0.5, 0.25])
    assert doc["id"] == "p1" and doc["source_version"] == 3
    assert doc["created_at"] == "2025-01-02T03:04:05.678Z"
    assert doc["embedding"] == [0.5, 0.25]
    assert doc["features"]["quality"] == 0.8 and doc["features"]["popularity"] > 0
    assert "extra_annotation" not in doc and "deleted" not in doc and "version" not in doc
    assert build_index_doc is to_index_doc
    json.dumps(doc)  # serialisable as is


def test_content_hash_covers_fields_not_vectors() -> None:
    item = validate_item(GOOD)
    a = to_index_doc(item, [0.1, 0.2])
    b = to_index_doc(item, [0.9, 0.9])
    assert a["content_hash"] == b["content_hash"] == to_index_doc(item, None)["content_hash"]
    changed = to_index_doc(validate_item(dict(GOOD, title="Other")), None)
    assert changed["content_hash"] != a["content_hash"]
    # the hash can be recomputed from the stored _source (what verify does)
    src = json.loads(json.dumps(a))
    assert content_hash(src) == a["content_hash"]


def test_behaviour_flows_through_unchanged() -> None:
    vec = [0.1 * (i + 1) for i in range(32)]
    item = validate_item(dict(GOOD, behaviour=vec), behaviour_dim=32)
    doc = to_index_doc(item, [1.0])
    assert doc["behaviour"] == vec
    # same text → same embedding text: a behaviour change never needs a re-encode
    assert embedding_text(item) == embedding_text(validate_item(GOOD))


def test_marketplace_items_validate() -> None:
    items, users = generate_marketplace(50, seed=3)
    assert [validate_item(i)["_id"] for i in items] == [f"p{i}" for i in range(50)]
    assert {u["_id"] for u in users} == {i["owner_id"] for i in items}


@pytest.mark.parametrize(
    ("op", "item", "outcome"),
    [
        ("index", {"status": 201}, "ok"),
        (
            "index",
            {"status": 409, "error": {"type": "version_conflict_engine_exception"}},
            "conflict",
        ),
        ("index", {"status": 429, "error": {"type": "es_rejected_execution_exception"}}, "retry"),
        ("index", {"status": 503}, "retry"),
        ("index", {"status": 400, "error": {"type": "mapper_parsing_exception"}}, "reject"),
        ("delete", {"status": 404, "result": "not_found"}, "ok"),
        ("delete", {"status": 409}, "conflict"),
        # a node behind on the cluster state: the index not found, nothing applied
        ("index", {"status": 404, "error": {"type": "index_not_found_exception"}}, "retry"),
        ("delete", {"status": 404, "error": {"type": "index_not_found_exception"}}, "retry"),
    ],
)
def test_classify(op: str, item: dict[str, Any], outcome: str) -> None:
    assert classify(op, item)[0] == outcome


def test_chunks_respect_count_and_bytes() -> None:
    actions = [Action("index", f"d{i}", 1, {"title": "x" * 1000}) for i in range(10)]
    chunks = list(chunk_actions(actions, max_docs=4, max_bytes=10**6))
    assert [len(c) for c in chunks] == [4, 4, 2]
    chunks = list(chunk_actions(actions, max_docs=100, max_bytes=2500))
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    meta = json.loads(chunks[0][0][1].split(b"\n")[0])
    assert meta == {"index": {"_id": "d0", "version": 1, "version_type": "external"}}
    # prepared actions carry their encoding; the writer sends those very bytes
    prepared = [a.with_data() for a in actions]
    assert [d for _, d in next(chunk_actions(prepared, 10, 10**6))] == [
        encode_action(a) for a in actions
    ]


def test_template_normalise_matches_cluster_style(settings: Settings) -> None:
    from opendisco import index_templates

    body = index_templates.render("items", settings)
    ours = normalise(body["settings"], body["mappings"])
    # OpenSearch answers settings nested under "index" with string values
    cluster_style = {"index": {k: v for k, v in body["settings"]["index"].items()}}
    cluster_style["index"]["analysis"] = body["settings"]["analysis"]
    assert normalise(cluster_style, body["mappings"]) == ours


def test_the_largest_vector_dimension_the_settings_allow_maps_on_the_engine(
    os_client: Any, settings: Settings, run_id: str
) -> None:
    """``embedding_dim``/``behaviour_dim`` at most KNN_DIM_MAX (tests/test_settings.py): the
    items template with both at the bound makes an index on the real engine, one more is
    refused by it (the settings loaded 16,001, and the first reindex failed)."""
    from opensearchpy.exceptions import RequestError

    from opendisco import index_templates
    from opendisco._settings import KNN_DIM_MAX

    for dim in (KNN_DIM_MAX, KNN_DIM_MAX + 1):
        dims = settings.model_copy(update={"embedding_dim": dim, "behaviour_dim": dim})
        body = index_templates.render("items", dims)
        index = f"t{run_id}-knn-dim-{dim}"
        try:
            if dim == KNN_DIM_MAX:
                assert os_client.indices.create(index=index, body=body)["acknowledged"]
            else:
                with pytest.raises(RequestError, match="Dimension value cannot be greater"):
                    os_client.indices.create(index=index, body=body)
        finally:
            os_client.indices.delete(index=index, ignore_unavailable=True)
