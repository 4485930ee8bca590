"""opendisco.ingest: MongoDB items → OpenSearch (validation, embeddings, reindex, sync, verify).

Items only: what members do (events, user state, graphs, counters) is ``opendisco.signals``.
"""

from opendisco._stored import read_vector, store_vector, vector_values

from ._apply import Applied, Counters, Prepared, prepare
from ._behaviour import BehaviourFeed, behaviour_collection, join_behaviour, write_behaviour
from ._behaviour_model import Published, publish_behaviour, served_collection
from ._bulk import (
    Action,
    BulkResult,
    BulkWriter,
    backoff_delay,
    chunk_actions,
    classify,
    encode_action,
)
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
from ._indices import (
    alias_targets,
    cleanup_partial,
    new_index_name,
    swap_alias,
    versioned_indices,
)
from ._letters import DEAD_LETTERS
from ._letters_admin import purge_letters, read_letters
from ._movielens import MovieLensData, load_movielens, positive_threshold
from ._packed import PACKED_FIELD, pack_vectors, unpack_many, unpack_vectors
from ._partitions import PartitionLeases, partition_of
from ._reconcile import ReconcileReport, reconcile
from ._reindex import ReindexReport, reindex, remove_partial_builds
from ._run_sync import run_sync
from ._sample import generate_marketplace, write_sample
from ._schema import ITEM_FIELDS, KINDS, exposure_cap, validate_item
from ._store import SYNC_STATE, items_collection, state_key
from ._sync import LeaseLost, Syncer, SyncReport, sync_once
from ._templates import TemplatePlan, apply_templates, plan_templates, set_replicas
from ._verify import VerifyReport, verify

__all__ = [
    "CACHE_COLLECTION",
    "DEAD_LETTERS",
    "ITEM_FIELDS",
    "KINDS",
    "PACKED_FIELD",
    "SYNC_STATE",
    "Action",
    "Applied",
    "BehaviourFeed",
    "BulkResult",
    "BulkWriter",
    "ChangeBatch",
    "ChangeFeed",
    "ChangeStreamFeed",
    "Counters",
    "Embedder",
    "EmbeddingCache",
    "HardDelete",
    "LeaseLost",
    "MemoryCache",
    "MongoCache",
    "MovieLensData",
    "PartitionLeases",
    "PollingFeed",
    "Prepared",
    "Published",
    "ReconcileReport",
    "ReindexReport",
    "SyncReport",
    "Syncer",
    "TemplatePlan",
    "VerifyReport",
    "alias_targets",
    "apply_templates",
    "backoff_delay",
    "behaviour_collection",
    "build_index_doc",
    "chunk_actions",
    "classify",
    "cleanup_partial",
    "content_hash",
    "detect_mode",
    "embedding_text",
    "encode_action",
    "exposure_cap",
    "generate_marketplace",
    "items_collection",
    "join_behaviour",
    "load_movielens",
    "new_index_name",
    "open_feed",
    "pack_vectors",
    "partition_of",
    "plan_templates",
    "positive_threshold",
    "prepare",
    "publish_behaviour",
    "purge_letters",
    "read_letters",
    "read_vector",
    "reconcile",
    "reindex",
    "remove_partial_builds",
    "run_sync",
    "seed_resume_token",
    "served_collection",
    "set_replicas",
    "state_key",
    "store_vector",
    "swap_alias",
    "sync_once",
    "text_key",
    "to_index_doc",
    "unpack_many",
    "unpack_vectors",
    "validate_item",
    "vector_values",
    "verify",
    "versioned_indices",
    "write_behaviour",
    "write_sample",
]
