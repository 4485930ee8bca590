"""The API over candidate ``_msearch`` answers that are neither plain successes nor plain
failures, on the real engine behind the fault proxy (``tests/http_faults.py``,
``rewrite_if``): a 200 whose sub-searches are error objects (429: a search queue full), in
part or all of them; an answer a response short or with none; hits without their
``_source`` (the rule fields). Each is a 200 that shows nothing a rule forbids: a live
answer marked ``degraded`` and counted by source, or the fallback's, never a 5xx."""

from __future__ import annotations

from typing import Any

from api_support import h, serve_faulty

from opendisco import Settings

URL = "/v1/users/u5/recommendations?k=10&explain=true"
_REJECTED = {"error": {"type": "es_rejected_execution_exception", "reason": "queue"}, "status": 429}


def _msearch(change: Any) -> Any:
    def rewrite(method: str, path: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        return change(answer) if path.endswith("/_msearch") else None

    return rewrite


def _no_source(answer: dict[str, Any]) -> dict[str, Any]:
    for r in answer["responses"]:
        for hit in r.get("hits", {}).get("hits", []):
            hit.pop("_source", None)
    return answer


async def test_msearch_answers_in_part_degrade_by_source_and_never_break_a_rule(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    key = keys["admin"]
    async with serve_faulty(api_settings, api_breaker_failures=100) as (proxy, client):
        rt = client.app.state.runtime
        whole = (await client.get(URL, headers=h(key))).json()
        assert whole["degraded"] is False and len(whole["items"]) == 10
        # one sub-search refused: a live answer from the others, degraded, counted
        proxy.rewrite_if = _msearch(lambda a: {**a, "responses": [_REJECTED, *a["responses"][1:]]})
        resp = await client.get(URL, headers=h(key))
        body = resp.json()
        assert resp.status_code == 200 and body["degraded"] is True, resp.text
        (failed,) = body["explain"]["source_errors"]
        metrics = (await client.get("/metrics")).text
        assert f'opendisco_api_source_errors_total{{source="{failed}",' in metrics
        assert rt.breaker.state.value == "closed"
        # none answered (all refused, or the answer holds no response): the fallback's
        for change in (
            lambda a: {**a, "responses": [_REJECTED for _ in a["responses"]]},
            lambda a: {**a, "responses": []},
        ):
            proxy.rewrite_if = _msearch(change)
            resp = await client.get(URL, headers=h(key))
            body = resp.json()
            assert resp.status_code == 200 and body["degraded"] is True, resp.text
            assert body["items"] and not body.get("explain"), body
        # hits without their rule fields: none shown (unconfirmed: ``available`` fails)
        proxy.rewrite_if = _msearch(_no_source)
        resp = await client.get(URL, headers=h(key))
        assert resp.status_code == 200 and resp.json()["items"] == [], resp.text
        assert resp.json()["explain"]["filtered"].get("available", 0) > 0


async def test_an_item_lookup_a_lagging_node_answers_index_not_found_is_no_404(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    """A node behind on the cluster state (resumed after a pause, right after a reindex's
    alias swap) answers a GET of an item through the alias 404 ``index_not_found_exception``:
    the API told the client the item does not exist (404 on ``similar``, every time). The
    engine's index is missing, not the item: the answer degrades like an outage's."""
    key = keys["admin"]
    async with serve_faulty(api_settings, api_breaker_failures=100) as (proxy, client):
        live = await client.get("/v1/items/p3/similar?k=5", headers=h(key))
        assert live.status_code == 200 and live.json()["degraded"] is False, live.text
        proxy.missing_if = lambda method, path: "/_doc/" in path
        resp = await client.get("/v1/items/p3/similar?k=5", headers=h(key))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["degraded"] is True and body["items"], body
        assert "p3" not in [it["id"] for it in body["items"]]
        assert proxy.answered.get(404, 0) >= 1
        proxy.missing_if = None
        gone = await client.get("/v1/items/no-such-item/similar?k=5", headers=h(key))
        assert gone.status_code == 404, gone.text  # an item that does not exist still is one
