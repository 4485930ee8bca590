"""opendisco.ingest: MongoDB items → OpenSearch (validation, embeddings, reindex, sync, verify).

Items only: what members do (events, user state, graphs, counters) is ``opendisco.signals``.
"""

from ._apply import ApplyStats, Prepared, prepare
from ._bulk import Action, BulkResult, BulkWriter, backoff_delay, chunk_actions, classify
from ._document import build_index_doc, content_hash, embedding_text, text_key, to_index_doc
from ._embed import CACHE_COLLECTION, Embedder, EmbeddingCache, MemoryCache, MongoCache
from ._feed import (
    ChangeBatch,
    ChangeFeed,
    ChangeStreamFeed,
    HardDelete,
    PollingFeed,
    detect_mode,
    open_feed,
    seed_resume_token,
)
from ._movielens import MovieLensData, load_movielens
from ._packed import PACKED_FIELD, pack_vectors, unpack_vectors
from ._reindex import (
    PREFETCH_RATIO,
    ReindexReport,
    alias_targets,
    cleanup_partial,
    new_index_name,
    reindex,
    swap_alias,
    versioned_indices,
)
from ._sample import generate_marketplace, write_sample
from ._schema import ITEM_FIELDS, KINDS, validate_item
from ._store import DEAD_LETTERS, SYNC_STATE, items_collection, state_key
from ._sync import Syncer, SyncReport, run_sync, sync_once
from ._templates import TemplatePlan, apply_templates, plan_templates, set_replicas
from ._verify import VerifyReport, verify

__all__ = [
    "CACHE_COLLECTION",
    "DEAD_LETTERS",
    "ITEM_FIELDS",
    "KINDS",
    "PACKED_FIELD",
    "PREFETCH_RATIO",
    "SYNC_STATE",
    "Action",
    "ApplyStats",
    "BulkResult",
    "BulkWriter",
    "ChangeBatch",
    "ChangeFeed",
    "ChangeStreamFeed",
    "Embedder",
    "EmbeddingCache",
    "HardDelete",
    "MemoryCache",
    "MongoCache",
    "MovieLensData",
    "PollingFeed",
    "Prepared",
    "ReindexReport",
    "SyncReport",
    "Syncer",
    "TemplatePlan",
    "VerifyReport",
    "alias_targets",
    "apply_templates",
    "backoff_delay",
    "build_index_doc",
    "chunk_actions",
    "classify",
    "cleanup_partial",
    "content_hash",
    "detect_mode",
    "embedding_text",
    "generate_marketplace",
    "items_collection",
    "load_movielens",
    "new_index_name",
    "open_feed",
    "pack_vectors",
    "plan_templates",
    "prepare",
    "reindex",
    "run_sync",
    "seed_resume_token",
    "set_replicas",
    "state_key",
    "swap_alias",
    "sync_once",
    "text_key",
    "to_index_doc",
    "unpack_vectors",
    "validate_item",
    "verify",
    "versioned_indices",
    "write_sample",
]
