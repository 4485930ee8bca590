"""Cluster configuration without servers: hosts, shards/replicas, heap, node layout, argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from opendisco import ConfigError, Settings, clients, index_templates, load_settings
from opendisco._transport import FailoverTransport
from opendisco.services import OpenSearchService, local_nodes
from opendisco.signals._counters_index import counters_body


def _s(**kw: object) -> Settings:
    return load_settings(state_dir=Path("/srv/od"), **kw)


def test_single_node_defaults() -> None:
    s = _s(opensearch_url="http://127.0.0.1:9200")
    assert s.opensearch_hosts == ["http://127.0.0.1:9200"]
    assert (s.shards, s.replicas, s.heap) == (1, 0, "2g")


def test_local_cluster_hosts_shards_replicas_heap() -> None:
    s = _s(opensearch_url="http://127.0.0.1:9260/", opensearch_nodes=3)
    assert s.opensearch_hosts == [f"http://127.0.0.1:{p}" for p in (9260, 9261, 9262)]
    assert (s.shards, s.replicas, s.heap) == (3, 1, "1g")
    assert s.opensearch_port == 9260
    pinned = _s(opensearch_nodes=3, index_shards=6, index_replicas=2, opensearch_heap="768m")
    assert (pinned.shards, pinned.replicas, pinned.heap) == (6, 2, "768m")


def test_remote_cluster_named_by_its_urls() -> None:
    s = _s(opensearch_url="http://os1:9200, http://os2:9200,http://os3:9200")
    assert s.opensearch_hosts == ["http://os1:9200", "http://os2:9200", "http://os3:9200"]
    assert (s.shards, s.replicas) == (3, 1)
    assert s.opensearch_port == 9200


def test_url_count_must_match_nodes() -> None:
    with pytest.raises(ConfigError, match="names 2 URLs"):
        _s(opensearch_url="http://a:9200,http://b:9200", opensearch_nodes=3)
    with pytest.raises(ConfigError, match="names no URL"):
        _s(opensearch_url=" , ")


def test_every_node_has_its_own_ports_and_files() -> None:
    s = _s(opensearch_url="http://127.0.0.1:9260", opensearch_nodes=3)
    nodes = local_nodes(s)
    assert [n.http_port for n in nodes] == [9260, 9261, 9262]
    assert [n.transport for n in nodes] == ["9360", "9361", "9362"]
    for attr in ("name", "data", "logs", "console", "pid_file"):
        values = [getattr(n, attr) for n in nodes]
        assert len(set(values)) == 3, attr
    assert all(n.data.is_relative_to(s.state_dir) for n in nodes)
    moved = local_nodes(s.model_copy(update={"opensearch_transport_port": 19400}))
    assert [n.transport for n in moved] == ["19400", "19401", "19402"]


def test_single_node_keeps_its_layout() -> None:
    (node,) = local_nodes(_s())
    assert node.data == Path("/srv/od/opensearch-data")
    assert node.pid_file == Path("/srv/od/run/opensearch.pid")
    assert node.transport == "9300-9400"


def test_cluster_argv_bootstraps_only_when_fresh() -> None:
    s = _s(opensearch_url="http://127.0.0.1:9260", opensearch_nodes=3, opensearch_cluster_name="c")
    svc = OpenSearchService(s, echo=lambda m: None)
    first = svc._argv(svc.nodes[1], bootstrap=True)
    assert "-Ecluster.name=c" in first and "-Enode.name=c-1" in first
    assert "-Ediscovery.seed_hosts=127.0.0.1:9360,127.0.0.1:9361,127.0.0.1:9362" in first
    assert "-Ecluster.initial_cluster_manager_nodes=c-0,c-1,c-2" in first
    assert "-Ehttp.port=9261" in first and "-Etransport.port=9361" in first
    again = svc._argv(svc.nodes[1], bootstrap=False)
    assert not any("initial_cluster_manager_nodes" in a for a in again)
    single = OpenSearchService(_s(), echo=lambda m: None)
    argv = single._argv(single.nodes[0], bootstrap=False)
    assert "-Ediscovery.type=single-node" in argv
    assert not any("seed_hosts" in a for a in argv)
    # the name the start message gives (before, a single node took the host's name)
    assert f"-Enode.name={single.nodes[0].name}" in argv


def test_indices_take_shards_and_replicas_from_settings() -> None:
    s = _s(opensearch_nodes=3, index_replicas=2)
    body = index_templates.render("items", s)["settings"]["index"]
    assert (body["number_of_shards"], body["number_of_replicas"]) == (3, 2)
    exposures = counters_body(s.shards, s.replicas)["settings"]["index"]
    assert (exposures["number_of_shards"], exposures["number_of_replicas"]) == (3, 2)
    single = index_templates.render("items", _s())["settings"]["index"]
    assert (single["number_of_shards"], single["number_of_replicas"]) == (1, 0)


def test_clients_know_every_node() -> None:
    s = _s(opensearch_url="http://127.0.0.1:9260", opensearch_nodes=3)
    sync = clients.opensearch(s)
    assert len(sync.transport.connection_pool.connections) == 3
    sync.close()
    aio = clients.async_opensearch(s, max_retries=0)
    assert isinstance(aio.transport, FailoverTransport)
    assert [h["port"] for h in aio.transport.hosts] == [9260, 9261, 9262]
