"""The playground page in a real headless Chromium: sign in with an admin key, pick a member,
change a weight and see the order change, submit bad JSON and see the error, save and promote
a draft and see the new version, evaluate it and see the metrics table and chart.

``OPENDISCO_PLAYGROUND_SCREENSHOT=docs/playground.png ./dev test tests/playground`` refreshes
the screenshot in docs/playground.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pg_support import eligible_member
from playwright.async_api import expect


async def _sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(f"{base}/playground")
    await page.wait_for_selector("#signin:not(.hidden)")
    await page.fill("#signin-key", key)
    await page.click("#signin-btn")
    await page.wait_for_selector("#app:not(.hidden)")
    await expect(page.locator("#draft-editor")).to_have_value(re.compile(r"template_params"))


async def _pick(page: Any, member: str, surface: str = "cold_start") -> None:
    await page.select_option("#surface", surface)
    await page.fill("#k", "10")
    await page.fill("#member-q", member)
    await page.click("#member-search-btn")
    await page.click(f"#member-results li[data-id='{member}']")
    await page.wait_for_selector("#draft-list li")


async def _ids(page: Any, list_id: str) -> list[str]:
    return await page.eval_on_selector_all(
        f"#{list_id} li:not(.dropped)", "els => els.map(e => e.dataset.id)"
    )


async def _edit(page: Any, change: Any) -> None:
    doc = json.loads(await page.input_value("#draft-editor"))
    change(doc)
    await page.fill("#draft-editor", json.dumps(doc, indent=2))


def _reweigh(doc: dict[str, Any]) -> None:
    doc["rerank"]["weights"].update(
        fused=0.0, content_sim=0.0, behaviour_sim=0.0, quality=5.0, popularity=-2.0
    )


async def test_change_a_weight_and_see_the_order_change(
    page: Any, pg_server: str, pg_keys: dict[str, str], pg_market: dict[str, Any]
) -> None:
    await _sign_in(page, pg_server, pg_keys["admin"])
    await _pick(page, eligible_member(pg_market))
    # the editor starts from what is served: the draft answer is the current one
    await page.wait_for_selector("#draft-list[data-changed='0']")
    before = await _ids(page, "current-list")
    assert len(before) == 10 and await _ids(page, "draft-list") == before
    await _edit(page, _reweigh)
    await page.click("#preview-btn")
    await page.wait_for_selector("#draft-list[data-changed='1']")
    assert await _ids(page, "current-list") == before
    after = await _ids(page, "draft-list")
    assert after != before
    assert await page.locator("#draft-list .badge.up, #draft-list .badge.down").count() > 0
    # an item's explain: sources, rerank steps, engine components, for both answers
    await page.click(f"#draft-list li[data-id='{after[0]}']")
    text = await page.inner_text("#explain")
    assert f"Why {after[0]}" in text and "rerank steps" in text and "engine score" in text


async def test_bad_json_and_bad_values_show_an_error(
    page: Any, pg_server: str, pg_keys: dict[str, str], pg_market: dict[str, Any]
) -> None:
    await _sign_in(page, pg_server, pg_keys["admin"])
    await _pick(page, eligible_member(pg_market))
    await page.fill("#draft-editor", '{"rerank": {"weights": {"quality": 5,}}')
    await page.click("#preview-btn")
    await page.wait_for_selector("#draft-error:not(.hidden)")
    assert "Invalid JSON" in await page.inner_text("#draft-error")
    # valid JSON, a value the template refuses: the server's message, in the page
    await page.click("#reset-btn")
    await _edit(page, lambda d: d["template_params"].update(w_semantic=-1))
    await page.click("#preview-btn")
    await expect(page.locator("#draft-error")).to_contain_text("w_semantic")
    assert "< min 0" in await page.inner_text("#draft-error")
    # a template that does not render
    await page.select_option("#draft-kind", "template")
    await _edit(page, lambda d: d["sources"]["lexical"]["body"].update(size={"$param": "nope"}))
    await page.click("#save-btn")
    await expect(page.locator("#draft-error")).to_contain_text("nope")
    assert "undeclared parameter" in await page.inner_text("#draft-error")


async def test_save_promote_and_see_the_new_version(
    page: Any,
    pg_server: str,
    pg_keys: dict[str, str],
    pg_market: dict[str, Any],
    pg_versions: Path,
) -> None:
    await _sign_in(page, pg_server, pg_keys["admin"])
    await _edit(page, _reweigh)
    await page.fill("#draft-title", "quality first (browser)")
    await page.click("#save-btn")
    await page.wait_for_selector("#draft-note:not(.hidden)")
    assert "Saved draft" in await page.inner_text("#draft-note")
    row = page.locator("#drafts-table tr", has_text="quality first (browser)")
    await row.locator(".promote-btn").click()
    await page.wait_for_selector("#promoted:not(.hidden)")
    note = await page.inner_text("#promoted")
    name = note.split(" to ", 1)[1].split(" ", 1)[0]
    assert name.startswith("params-v") and name.endswith(".json"), note
    assert (pg_versions / name).is_file()
    await expect(row.locator("td.status")).to_contain_text(name)
    await expect(row.locator(".promote-btn")).to_be_disabled()
    # the same draft as an experiment's treatment arm (created, started by an operator)
    await row.locator(".experiment-btn").click()
    await expect(page.locator("#promoted")).to_contain_text("Created experiment pg-")
    assert "control vs treatment" in await page.inner_text("#promoted")
    assert "opendisco experiments start pg-" in await page.inner_text("#promoted")


async def test_evaluate_a_draft_and_see_the_table_and_chart(
    page: Any, pg_server: str, pg_keys: dict[str, str], pg_market: dict[str, Any], tmp_path: Path
) -> None:
    await _sign_in(page, pg_server, pg_keys["admin"])
    await _pick(page, eligible_member(pg_market))
    await _edit(page, _reweigh)
    await page.click("#preview-btn")
    await page.wait_for_selector("#draft-list[data-changed='1']")
    await page.fill("#draft-title", "quality first")
    await page.click("#save-btn")
    await page.wait_for_selector("#draft-note:not(.hidden)")
    row = page.locator("#drafts-table tr", has_text="quality first").first
    await row.locator(".eval-btn").click()
    await page.wait_for_selector("#eval-table tr td", timeout=300_000)
    table = await page.inner_text("#eval-table")
    assert "ndcg@10" in table and "paired SE" in table
    assert await page.locator("#eval-chart svg rect").count() == 8  # 4 metrics x 2 models
    assert "6 users" in await page.inner_text("#eval-notes")
    first = (await _ids(page, "draft-list"))[0]
    await page.click(f"#draft-list li[data-id='{first}']")
    shot = tmp_path / "playground.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("OPENDISCO_PLAYGROUND_SCREENSHOT"):
        shutil.copy(shot, os.environ["OPENDISCO_PLAYGROUND_SCREENSHOT"])
