"""Clusters of the mutual-like / co-engagement graph (Louvain, networkx), snapshotted.

Members likely to match each other should share a cluster so that a cluster-randomised
experiment keeps most interference inside clusters. The graph's edges are mutual likes
(weight 2) and one-way likes (weight 1) between members; ``networkx.community.
louvain_communities`` (seeded: the same graph and seed give the same partition) partitions
it. A member without edges is a cluster of its own. Cluster ids are ``c<k>`` numbered by
each cluster's smallest member, so a snapshot is reproducible and diffable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["louvain_clusters", "within_share"]


def louvain_clusters(
    members: Sequence[str],
    edges: Iterable[tuple[str, str, float]],
    *,
    resolution: float = 1.0,
    seed: int = 0,
) -> dict[str, str]:
    """``{member: cluster id}`` for every member (and every edge endpoint)."""
    import networkx as nx  # 1-2 s to import: only experiments start needs it

    g = nx.Graph()
    g.add_nodes_from(members)
    for u, v, w in edges:
        if u == v:
            continue
        prev = g.get_edge_data(u, v, default={"weight": 0.0})["weight"]
        g.add_edge(u, v, weight=prev + float(w))
    parts = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
    ordered = sorted((sorted(p) for p in parts), key=lambda p: p[0])
    width = len(str(max(len(ordered) - 1, 0)))
    return {m: f"c{k:0{width}d}" for k, part in enumerate(ordered) for m in part}


def within_share(clusters: dict[str, str], pairs: Iterable[tuple[str, str]]) -> float:
    """Share of (viewer, candidate) interactions that stay inside one cluster."""
    total = inside = 0
    for u, v in pairs:
        total += 1
        cu = clusters.get(u)
        inside += cu is not None and cu == clusters.get(v)
    return inside / total if total else 1.0
