"""compose.yaml cannot run here (no Docker engine): validate its structure instead — the
default single-node stack and the production profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opendisco import Settings, load_settings

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


# --- profile production: 3 OpenSearch nodes, a MongoDB replica set, 2 API, 2 sync ----------

OS_NODES = ("os1", "os2", "os3")
MONGO_MEMBERS = ("mongo1", "mongo2", "mongo3")


def _profiled(compose: dict[str, Any], profile: str) -> set[str]:
    return {n for n, svc in compose["services"].items() if profile in svc.get("profiles", [])}


def test_production_is_a_profile_beside_the_default_stack(compose: dict[str, Any]) -> None:
    assert _profiled(compose, "production") == {*OS_NODES, *MONGO_MEMBERS, "api-ha", "sync-ha"}
    unprofiled = {n for n, svc in compose["services"].items() if "profiles" not in svc}
    assert unprofiled == {"opensearch", "mongo", "api", "sync"}  # `docker compose up` as before


def test_production_opensearch_is_one_three_node_cluster(compose: dict[str, Any]) -> None:
    envs = [compose["services"][n]["environment"] for n in OS_NODES]
    assert [e["node.name"] for e in envs] == list(OS_NODES)
    assert len({e["cluster.name"] for e in envs}) == 1
    for name, env in zip(OS_NODES, envs, strict=True):
        svc = compose["services"][name]
        assert svc["image"].split(":")[1] == Settings.model_fields["opensearch_version"].default
        assert "discovery.type" not in env
        assert set(env["discovery.seed_hosts"].split(",")) == set(OS_NODES)
        assert set(env["cluster.initial_cluster_manager_nodes"].split(",")) == set(OS_NODES)
        xms, xmx = env["OPENSEARCH_JAVA_OPTS"].split()
        assert xms.removeprefix("-Xms") == xmx.removeprefix("-Xmx")  # a fixed heap
        assert "wait_for_nodes=3" in " ".join(svc["healthcheck"]["test"])
    data = [compose["services"][n]["volumes"][0].split(":")[0] for n in OS_NODES]
    assert len(set(data)) == 3  # one data volume per node


def test_production_mongo_is_a_three_member_replica_set(compose: dict[str, Any]) -> None:
    sets = set()
    for name in MONGO_MEMBERS:
        cmd = compose["services"][name]["command"]
        sets.add(cmd[cmd.index("--replSet") + 1])
    assert len(sets) == 1
    (rs,) = sets
    check = " ".join(compose["services"]["mongo1"]["healthcheck"]["test"])
    assert f"_id: '{rs}'" in check and "PRIMARY" in check
    assert all(f"host: '{m}:27017'" in check for m in MONGO_MEMBERS)


@pytest.mark.parametrize("name", ["api-ha", "sync-ha"])
def test_production_app_replicas_reach_every_node(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = compose["services"][name]
    assert svc["deploy"]["replicas"] == 2
    env = svc["environment"]
    known = {f"OPENDISCO_{field.upper()}" for field in Settings.model_fields}
    assert not {k for k in env if k.startswith("OPENDISCO_")} - known
    for dep in (*OS_NODES, "mongo1"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"
    for key, value in env.items():
        if key.startswith("OPENDISCO_") and "${" not in str(value):
            monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.opensearch_hosts == [f"http://{n}:9200" for n in OS_NODES]
    assert (settings.shards, settings.replicas) == (3, 1)
    assert all(f"{m}:27017" in settings.mongo_url for m in MONGO_MEMBERS)
    assert "replicaSet=rs0" in settings.mongo_url


def test_production_api_replicas_share_the_cursor_secret(compose: dict[str, Any]) -> None:
    svc = compose["services"]["api-ha"]
    assert svc["environment"]["OPENDISCO_API_CURSOR_SECRET"].startswith(
        "${OPENDISCO_API_CURSOR_SECRET"
    )
    assert "test -n" in svc["command"][-1]  # refuses to start without it
    (ports,) = svc["ports"]
    first, last = ports.split(":")[1].split("-")
    assert int(last) - int(first) + 1 == svc["deploy"]["replicas"]  # a host port per replica
