"""Settings: one object, env over TOML over defaults; every field documented (datasette-style)."""

from __future__ import annotations

import gc
import multiprocessing
import socket
import threading
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from click.testing import CliRunner

from opendisco import ConfigError, Settings, load_settings
from opendisco import _clients as clients
from opendisco._settings import (
    COUNT_MAX,
    MONGO_SOCKET_S_MAX,
    MONGO_SOCKET_S_MIN,
    RETENTION_DAYS_MAX,
    SECONDS_MAX,
    WAIT_S_MAX,
    _is_number,
    unknown_env,
)
from opendisco.cli._settings_cmd import markdown
from opendisco.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_documented() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text()
    missing = [n for n in Settings.model_fields if f"`{n}`" not in doc]
    assert not missing, f"add to docs/settings.md (opendisco settings --markdown): {missing}"
    assert doc == markdown(), "docs/settings.md is stale: run opendisco settings --markdown"


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "od.toml"
    cfg.write_text('index_alias = "from-toml"\nkeep_versions = 5\n')
    monkeypatch.setenv("OPENDISCO_CONFIG", str(cfg))
    monkeypatch.setenv("OPENDISCO_KEEP_VERSIONS", "3")
    s = load_settings()
    assert s.index_alias == "from-toml"
    assert s.keep_versions == 3


def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENDISCO_KEEP_VERSIONS", "-1")
    with pytest.raises(ConfigError):
        load_settings()
    monkeypatch.setenv("OPENDISCO_KEEP_VERSIONS", "1")
    monkeypatch.setenv("OPENDISCO_API_RATE_LIMIT", "0")  # every request would divide by it
    with pytest.raises(ConfigError):
        load_settings()
    monkeypatch.delenv("OPENDISCO_API_RATE_LIMIT")
    monkeypatch.setenv("OPENDISCO_CONFIG", "/nonexistent.toml")
    with pytest.raises(ConfigError):
        load_settings()


@pytest.mark.parametrize(
    "name", ["EXPOSURE_WINDOW_HOURS", "TRENDING_WINDOW_HOURS", "TRENDING_HALF_LIFE_HOURS"]
)
@pytest.mark.parametrize("value", ["1e-9", "1e13", "inf", "nan"])
def test_windows_the_counters_cannot_hold_are_config_errors(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window under 1 ms was 0 in the counters' milliseconds (every write opened a new one:
    4 impressions of a cap-3 item, never capped; every read divided by zero), one of 10^13 h
    past the engine's 64-bit longs (every counter write refused), inf an OverflowError at
    start-up. (A half-life only needs to be finite: a tiny one decays to 0.)"""
    monkeypatch.setenv(f"OPENDISCO_{name}", value)
    if name == "TRENDING_HALF_LIFE_HOURS" and value == "1e-9":
        assert load_settings().trending_half_life_hours == 1e-9
        return
    with pytest.raises(ConfigError):
        load_settings()


@pytest.mark.parametrize("name", ["SERVED_LOG_DAYS", "DEAD_LETTER_DAYS"])
@pytest.mark.parametrize("value", ["1e6", "inf", "nan"])
def test_retentions_past_what_a_purge_or_ttl_index_holds_are_config_errors(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10^6 days put the purge's cutoff before year 1: an OverflowError, which `opendisco
    sync` died of at its first reconcile (dead letters) and the served log's purge at each
    round; a TTL index holds at most 2^31 - 1 s. The bound itself purges on the real store
    (tests/serving/test_serving_served_log.py)."""
    monkeypatch.setenv(f"OPENDISCO_{name}", value)
    with pytest.raises(ConfigError):
        load_settings()
    monkeypatch.setenv(f"OPENDISCO_{name}", str(RETENTION_DAYS_MAX))
    assert getattr(load_settings(), name.lower()) == RETENTION_DAYS_MAX


def test_unknown_toml_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "od.toml"
    cfg.write_text("no_such_setting = 1\n")
    monkeypatch.setenv("OPENDISCO_CONFIG", str(cfg))
    with pytest.raises(ConfigError):
        load_settings()


def test_cli_maps_config_error_to_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENDISCO_OPENSEARCH_TIMEOUT", "not-a-number")
    result = CliRunner().invoke(cli, ["settings"])
    assert result.exit_code == 2
    assert "invalid settings" in result.output


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``OPENDISCO_*`` variable that is no setting was silently ignored: an operator who
    wrote ``OPENDISCO_INDX_ALIAS`` served the default index without a word."""
    monkeypatch.setenv("OPENDISCO_INDX_ALIAS", "mine")
    monkeypatch.setenv("OPENDISCO_CONFIG", "")  # not a setting, but the loader's own
    assert unknown_env() == {"OPENDISCO_INDX_ALIAS": "OPENDISCO_INDEX_ALIAS"}
    with caplog.at_level("WARNING", logger="opendisco.settings"):
        assert load_settings().index_alias != "mine"
    assert "OPENDISCO_INDX_ALIAS is not a setting" in caplog.text
    assert "did you mean OPENDISCO_INDEX_ALIAS?" in caplog.text


#: every number setting, by field name
NUMBERS = {n: f for n, f in Settings.model_fields.items() if _is_number(f.annotation)}
#: numbers with no upper bound, each with why any finite value works
UNBOUNDED = {
    "item_sim_half_life": "0.5 ** (i / h) tends to 1: flat weights",
    "api_rate_limit": "a rate: a larger one never refuses (the benches run 10^9)",
    "api_rate_burst": "a bucket size: a larger one never empties",
    "pacing_budget_max": "the controller clamps its log-budget within log(min)..log(max)",
    "pacing_budget_min": "as pacing_budget_max",
    "pacing_gain": "a step of the clamped log-budget (the error is clipped to ±1)",
    "pacing_kp": "as pacing_gain",
    "pacing_cap_gain": "a step of the clamped log-cap",
}
#: a floor whose ceiling must be at least as high (refused at load otherwise)
CEILINGS = {"pacing_budget_min": "pacing_budget_max"}


def _bounds(name: str) -> tuple[Any, Any]:
    """(lower, upper) bound constraints of a field (annotated_types Ge/Gt, Le/Lt or None)."""
    meta = NUMBERS[name].metadata
    low = next((m for m in meta if isinstance(m, annotated_types.Ge | annotated_types.Gt)), None)
    high = next((m for m in meta if isinstance(m, annotated_types.Le | annotated_types.Lt)), None)
    return low, high


def _shown(bound: float) -> str:
    """A bound as the error message writes it (1.0 as 1)."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str, *also: str) -> None:
    monkeypatch.setenv(f"OPENDISCO_{name.upper()}", value)
    with pytest.raises(ConfigError, match=f"OPENDISCO_{name.upper()}") as caught:
        load_settings()
    for text in also:
        assert text in str(caught.value)


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_every_number_is_finite_and_within_bounds_its_users_hold(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The red team's class of bug: a number that loaded and failed later (inf an
    OverflowError in timedelta or a socket timeout, 10^11 s of sync overlap before year 1,
    opensearch_timeout 0 or -1 every sync-client request a ValueError, a Mongo socket timeout
    of 10^6 s refused by the driver and under 1 ms its 'no timeout', a GC threshold of 2^31
    an OverflowError at the API's start, TOML's `true` a 1 s lease). Every number setting is
    finite, bounded on both sides (or says why any value works) and refused at load past its
    bounds, with its variable and the bound named; the bound itself loads."""
    field = NUMBERS[name]
    env = f"OPENDISCO_{name.upper()}"
    for value in ("nan", "inf", "-inf", "1e400", "abc"):
        _refused(monkeypatch, name, value)
    is_int = int in (typing.get_args(field.annotation) or (field.annotation,))
    low, high = _bounds(name)
    assert low is not None, f"{name}: give it a lower bound"
    if high is None:
        assert name in UNBOUNDED, f"{name}: give it an upper bound or say why any value works"
        monkeypatch.setenv(env, "1e300")
        if name in CEILINGS:
            monkeypatch.setenv(f"OPENDISCO_{CEILINGS[name].upper()}", "1e300")
        assert getattr(load_settings(), name) == 1e300
    else:
        assert name not in UNBOUNDED
        bound = high.le if isinstance(high, annotated_types.Le) else high.lt
        past = bound + 1 if is_int else bound * (1 + 1e-9)
        _refused(monkeypatch, name, str(past if isinstance(high, annotated_types.Le) else bound))
        _refused(monkeypatch, name, str(10**30), _shown(bound))
        if isinstance(high, annotated_types.Le):
            monkeypatch.setenv(env, str(bound))
            assert getattr(load_settings(), name) == bound
    bound = low.ge if isinstance(low, annotated_types.Ge) else low.gt
    below = bound - 1 if is_int else bound - max(abs(bound) * 1e-9, 1e-12)
    _refused(monkeypatch, name, str(below if isinstance(low, annotated_types.Ge) else bound))
    _refused(monkeypatch, name, str(-(10**30)), _shown(bound))
    monkeypatch.delenv(env)
    if name in CEILINGS:
        monkeypatch.delenv(f"OPENDISCO_{CEILINGS[name].upper()}")
    # a TOML file's wrong types, named with the key (a bool is no number: true was 1)
    cfg = tmp_path / "od.toml"
    monkeypatch.setenv("OPENDISCO_CONFIG", str(cfg))
    for value in ("true", "false", '"abc"', "[1]", "{ a = 1 }", "nan", "inf", "-inf"):
        cfg.write_text(f"{name} = {value}\n")
        with pytest.raises(ConfigError, match=f"{name} \\({env}\\)"):
            load_settings()


def test_the_bounds_hold_where_the_values_go() -> None:
    """The general bounds sit below what their users take, and just past them they break:
    SECONDS_MAX is a lock's wait and a date either side of now; WAIT_S_MAX a socket timeout
    (past 2^32 ms one wraps: 4,294,967.5 s timed out after 0.2 s) and a pipe's poll (uvicorn's
    health check: OverflowError past it); COUNT_MAX a GC threshold; the MongoDB client takes
    the socket timeout's bounds and the API's third of the shortest claim lease as timeouts
    (not 0 ms, the driver's 'no timeout')."""
    now = datetime.now(UTC)
    assert now - timedelta(seconds=SECONDS_MAX) < now < now + timedelta(seconds=SECONDS_MAX)
    assert threading.Lock().acquire(timeout=SECONDS_MAX)
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(WAIT_S_MAX)
        threading.Timer(0.3, b.sendall, (b"x",)).start()
        assert a.recv(1) == b"x"  # waited 0.3 s
        a.settimeout(2**32 / 1000 + 0.2)
        with pytest.raises(TimeoutError):
            a.recv(1)
    ours, theirs = multiprocessing.Pipe()
    with ours, theirs:
        theirs.send(1)
        assert ours.poll(WAIT_S_MAX)
        with pytest.raises(OverflowError):
            ours.poll(WAIT_S_MAX + 1)
    before = gc.get_threshold()
    try:
        gc.set_threshold(COUNT_MAX, *before[1:])
    finally:
        gc.set_threshold(*before)
    low = _bounds("events_claim_lease_s")[0].ge
    for timeout_s, lease_s in [(MONGO_SOCKET_S_MIN, 30.0), (MONGO_SOCKET_S_MAX, 30.0), (300, low)]:
        s = load_settings(mongo_socket_timeout_s=timeout_s, events_claim_lease_s=lease_s)
        api_ms = int(min(s.mongo_socket_timeout_s, s.events_claim_lease_s / 3) * 1000)
        for client in (
            clients.mongo(s, connect=False),
            clients.mongo(s, connect=False, socketTimeoutMS=api_ms),
        ):
            try:
                assert client.options.pool_options.socket_timeout is not None
            finally:
                client.close()


def test_a_pacing_budget_floor_above_its_ceiling_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loaded before: the controller's clamp then answered the ceiling or the floor by which
    side of them the integral stood, never a budget between."""
    monkeypatch.setenv("OPENDISCO_PACING_BUDGET_MIN", "4")
    monkeypatch.setenv("OPENDISCO_PACING_BUDGET_MAX", "2")
    with pytest.raises(ConfigError, match=r"pacing_budget_min .* is above pacing_budget_max"):
        load_settings()
    monkeypatch.setenv("OPENDISCO_PACING_BUDGET_MAX", "4")
    assert load_settings().pacing_budget_min == load_settings().pacing_budget_max == 4
