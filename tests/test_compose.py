"""compose.yaml cannot run here (no Docker engine): validate its structure instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opendisco import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"opensearch", "mongo", "api"} <= set(compose["services"])


def test_opensearch_matches_local_version(compose: dict[str, Any]) -> None:
    svc = compose["services"]["opensearch"]
    image, tag = svc["image"].split(":")
    assert image == "opensearchproject/opensearch"
    assert tag == Settings.model_fields["opensearch_version"].default
    env = svc["environment"]
    assert env["discovery.type"] == "single-node"
    assert env["DISABLE_SECURITY_PLUGIN"] == "true"
    assert "healthcheck" in svc


def test_mongo_is_single_node_replica_set(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mongo"]
    assert svc["image"] == "mongo:7"
    cmd = svc["command"]
    assert "--replSet" in cmd
    rs = cmd[cmd.index("--replSet") + 1]
    check = " ".join(svc["healthcheck"]["test"])
    assert "rs.initiate" in check and rs in check


def test_app_services_use_known_settings(compose: dict[str, Any]) -> None:
    known = {f"OPENDISCO_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "sync"):
        svc = compose["services"][name]
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("OPENDISCO_")} - known
        assert not unknown, f"{name}: unknown settings {unknown}"
        assert "replicaSet=" in env["OPENDISCO_MONGO_URL"]
        for dep in ("opensearch", "mongo"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy"


def test_ports_bind_loopback_and_volumes_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} exposes {port} beyond loopback"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src in declared, f"{name}: volume {src} not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in compose["services"]


def test_dockerfile_exists_for_build_services(compose: dict[str, Any]) -> None:
    for svc in compose["services"].values():
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").is_file()
