"""An API process answers before its query encoder has loaded: the model loads in the
background (``serving._encoder``), so a restarted process, or a replaced worker, serves after
its start-up (3 s here) instead of after the encoder's ~10 s import; a search arriving
meanwhile waits for the load, within its deadline; ``/readyz`` says not ready until it has
landed (a load balancer holds traffic back; the workers of one ``serve``, sharing its socket,
serve at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from api_support import free_port, h, serve_env, start_serve, stop_serve

from opendisco import Settings
from opendisco.serving import ENCODER_LOADED, QueryEncoder


def test_a_process_answers_while_its_encoder_loads_and_a_search_waits_for_it(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    # a deadline long enough for the search to wait out the load: answered from the pipeline
    env = serve_env(api_settings, tmp_path, OPENDISCO_API_DEADLINE_MS="60000")
    log = tmp_path / "serve.log"
    proc = start_serve(env, port, log, encoder=False)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90) as c:
            loading = c.get("/readyz")
            feed = c.get("/v1/users/u2/recommendations?k=5", headers=h(keys["read"]))
            answered_loading = ENCODER_LOADED not in log.read_text(errors="replace")
            search = c.get("/v1/search?q=jazz%20coffee&k=5", headers=h(keys["read"]))
            assert ENCODER_LOADED in log.read_text(errors="replace")  # what it waited for
            again = c.get("/v1/search?q=hiking&k=5", headers=h(keys["read"]))
            ready = c.get("/readyz")
    finally:
        stop_serve(proc)
    assert answered_loading, "the process answered only once its encoder had loaded"
    # not ready for a load balancer meanwhile
    assert loading.status_code == 503 and loading.headers["Retry-After"], loading.text
    assert loading.json()["checks"]["encoder"] is False, loading.text
    assert ready.status_code == 200 and ready.json()["checks"]["encoder"] is True, ready.text
    assert feed.status_code == 200, feed.text
    assert feed.json()["items"] and feed.json()["degraded"] is False
    for resp in (search, again):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["degraded"] is False and 0 < len(body["items"]) <= 5, body
    assert log.read_text(errors="replace").count(ENCODER_LOADED) == 1  # loaded once


async def test_the_encoder_loads_once_for_concurrent_searches_and_again_after_a_failure(
    base_settings: Settings, tmp_path: Path
) -> None:
    """Searches waiting for the load share it; a load that failed (no model at the path) is
    tried again by the next search, not kept failed."""
    enc = QueryEncoder(base_settings.model_copy(update={"model_path": str(tmp_path / "none")}))
    first = enc.start()
    assert enc.start() is first  # one load for every caller while it runs
    failed = await asyncio.gather(*(enc.encode("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in failed), failed
    assert enc.model is None
    enc.settings = base_settings  # the model is there now
    assert enc.start() is not first
    a, b = await asyncio.gather(enc.encode("jazz"), enc.encode("jazz"))
    assert a == b and abs(sum(x * x for x in a) - 1.0) < 1e-3
    assert enc.model is not None and enc.start().done()
