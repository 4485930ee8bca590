"""Settings: one object, env over TOML over defaults; every field documented (datasette-style)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opendisco import ConfigError, Settings, load_settings
from opendisco._settings import RETENTION_DAYS_MAX, unknown_env
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
