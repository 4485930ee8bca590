"""opendisco.signals: what members do, as state the ranking reads in real time.

Events (one :class:`Event` model, validated once; :class:`EventProcessor` applies batches
idempotently) feed the per-member :class:`UserState` (recent positives/negatives, seen and
blocked ids, a decayed content vector and a folded-in behaviour vector), the item
co-engagement graph (:class:`ItemGraph`), mutual likes (:class:`UserGraph`), inbound attention
counters (:class:`InboundCounter`), blocks between members both ways (:class:`BlockStore`)
and the exposure counters with the in-engine cap list (:class:`ExposureStore`). Everything
here writes to and reads from the stores; nothing here ranks.
"""

from ._behaviour import fold_in
from ._blocks import MEMBER_BLOCKS, BlockStore, MemberBlocks
from ._event import (
    EVENT_TYPES,
    INBOUND_TYPES,
    MUTUAL_TYPES,
    REQUEST_ID_PATTERN,
    Event,
    EventsConfig,
    EventsResult,
    EventType,
    validate_event,
)
from ._exposure import CAPPED_DOC_ID, ExposureStore, capped_lookup, exposure_index
from ._graph import (
    INBOUND,
    ITEM_EDGES,
    RECENT_FANOUT,
    USER_LIKES,
    USER_MATCHES,
    InboundCounter,
    ItemGraph,
    UserGraph,
    adjacency_updates,
    decode_row,
    encode_row,
    merge_rows,
    top_neighbours,
)
from ._processor import EVENTS, EventProcessor
from ._served_log import SERVED_LISTS, ServedList, ServedLog, decode_list, sample_rows
from ._user_state import (
    USER_LOCKS,
    USER_STATE,
    UserState,
    UserStateConfig,
    UserStateStore,
    decayed_vector,
    merge_events,
    recompute,
)

__all__ = [
    "CAPPED_DOC_ID",
    "EVENTS",
    "EVENT_TYPES",
    "INBOUND",
    "INBOUND_TYPES",
    "ITEM_EDGES",
    "MEMBER_BLOCKS",
    "MUTUAL_TYPES",
    "RECENT_FANOUT",
    "REQUEST_ID_PATTERN",
    "SERVED_LISTS",
    "USER_LIKES",
    "USER_LOCKS",
    "USER_MATCHES",
    "USER_STATE",
    "BlockStore",
    "Event",
    "EventProcessor",
    "EventType",
    "EventsConfig",
    "EventsResult",
    "ExposureStore",
    "InboundCounter",
    "ItemGraph",
    "MemberBlocks",
    "ServedList",
    "ServedLog",
    "UserGraph",
    "UserState",
    "UserStateConfig",
    "UserStateStore",
    "adjacency_updates",
    "capped_lookup",
    "decayed_vector",
    "decode_list",
    "decode_row",
    "encode_row",
    "exposure_index",
    "fold_in",
    "merge_events",
    "merge_rows",
    "recompute",
    "sample_rows",
    "top_neighbours",
    "validate_event",
]
