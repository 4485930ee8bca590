"""Which events count where (pure): the increments a claimed batch writes."""

from __future__ import annotations

from datetime import UTC, datetime

from opendisco.signals import Event, EventsConfig
from opendisco.signals._effects import plan_effects

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ITEMS = {
    "p1": {"kind": "profile", "owner_id": "m1"},
    "p2": {"kind": "profile", "owner_id": "m2"},
    "mv": {"kind": "movie"},
}


def _ev(i: int, kind: str, item: str, **kw: object) -> Event:
    return Event(id=f"e{i}", type=kind, user_id="u", item_id=item, ts=NOW, **kw)  # type: ignore[arg-type]


def test_effects_of_a_batch() -> None:
    evs = [
        _ev(1, "impression", "p1", request_id="r1"),  # a served list's profile: counted when served
        _ev(2, "impression", "p1"),  # no list named: counted here
        _ev(3, "impression", "mv", request_id="r1"),  # movies are never counted when served
        _ev(4, "like", "p2"),
        _ev(5, "like", "mv"),
        _ev(6, "message", "p2"),
    ]
    w = EventsConfig().weights
    fx = plan_effects(evs, ITEMS, w, count_served=True)
    assert fx.impressions == {"p1": 1, "mv": 1}
    assert fx.likes == [("u", "m2", "p2")]
    assert fx.inbound == [("p2", NOW), ("p2", NOW)]  # profiles only: a movie is not overloaded
    assert fx.trend == [("p2", NOW, 1.0), ("mv", NOW, 1.0)]
    assert [e["id"] for e in fx.by_user["u"]] == [f"e{i}" for i in range(1, 7)]
    # without served counting, every impression event counts
    assert plan_effects(evs, ITEMS, w, count_served=False).impressions == {"p1": 2, "mv": 1}
