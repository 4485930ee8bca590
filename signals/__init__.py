"""opendisco.signals: what members do, as state the ranking reads in real time.

Events (one :class:`Event` model, validated once; :class:`EventProcessor` applies each event
once, also when it is posted concurrently: :class:`EventClaims`) feed the per-member
:class:`UserState` (recent positives/negatives, seen and blocked ids, a decayed content vector
and a folded-in behaviour vector), the item co-engagement graph (:class:`ItemGraph`; a trained
item–item model's rows: :class:`ItemSimilarity`), mutual likes (:class:`UserGraph`), inbound
attention counters (:class:`InboundCounter`), blocks between members both ways
(:class:`BlockStore`), the exposure counters with the in-engine cap list and live trending
counts (:class:`ExposureStore`) and the pacing controller (:class:`PacingController`).
Everything here writes to and reads from the stores; nothing here ranks.
"""

from ._behaviour import fold_in
from ._blocks import MEMBER_BLOCKS, BlockStore, MemberBlocks
from ._caps import KnownImpressions, item_cap
from ._claims import CLAIMS, ClaimStatus, EventClaims, classify
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
from ._exposure import CAPPED_DOC_ID, Exposure, ExposureStore, capped_lookup, exposure_index
from ._exposure_mirror import ExposureMirror
from ._folding import (
    BEHAVIOUR_POINTER_S,
    as_served,
    decayed_vector,
    followed_behaviour,
    needs_refold,
    recompute,
)
from ._graph import (
    ITEM_EDGES,
    RECENT_FANOUT,
    ItemGraph,
    adjacency_updates,
    co_engagement_pairs,
    decode_row,
    encode_row,
    merge_rows,
    summed_weights,
    top_neighbours,
)
from ._inbound import INBOUND, InboundCounter
from ._members import USER_INBOX, USER_LIKES, USER_MATCHES, Inbox, UserGraph
from ._pacing import (
    PACING,
    PacingController,
    PacingState,
    PacingTargets,
    attention_stats,
    cap_step,
    pacing_step,
    water_level,
)
from ._processor import EVENTS, RECOVER_FIRST_S, EventProcessor
from ._served import ServedExposure
from ._served_journal import Adopted, ServedJournal, adopted_mark, journal_dir, read_journal
from ._served_list import ServedList, decode_list, sample_rows
from ._served_log import SERVED_LISTS, ServedLog
from ._served_spool import ServedSpool, read_spooled, spool_dir
from ._signal_copies import SignalCopies
from ._similarity import ITEM_SIMILARITY, ItemSimilarity
from ._trending import decayed, rate_per_day, trend_increments
from ._user_state import (
    MEMBER_TASTES,
    USER_LOCKS,
    USER_STATE,
    UserState,
    UserStateConfig,
    UserStateStore,
    merge_events,
)

__all__ = [
    "BEHAVIOUR_POINTER_S",
    "CAPPED_DOC_ID",
    "CLAIMS",
    "EVENTS",
    "EVENT_TYPES",
    "INBOUND",
    "INBOUND_TYPES",
    "ITEM_EDGES",
    "ITEM_SIMILARITY",
    "MEMBER_BLOCKS",
    "MEMBER_TASTES",
    "MUTUAL_TYPES",
    "PACING",
    "RECENT_FANOUT",
    "RECOVER_FIRST_S",
    "REQUEST_ID_PATTERN",
    "SERVED_LISTS",
    "USER_INBOX",
    "USER_LIKES",
    "USER_LOCKS",
    "USER_MATCHES",
    "USER_STATE",
    "Adopted",
    "BlockStore",
    "ClaimStatus",
    "Event",
    "EventClaims",
    "EventProcessor",
    "EventType",
    "EventsConfig",
    "EventsResult",
    "Exposure",
    "ExposureMirror",
    "ExposureStore",
    "InboundCounter",
    "Inbox",
    "ItemGraph",
    "ItemSimilarity",
    "KnownImpressions",
    "MemberBlocks",
    "PacingController",
    "PacingState",
    "PacingTargets",
    "ServedExposure",
    "ServedJournal",
    "ServedList",
    "ServedLog",
    "ServedSpool",
    "SignalCopies",
    "UserGraph",
    "UserState",
    "UserStateConfig",
    "UserStateStore",
    "adjacency_updates",
    "adopted_mark",
    "as_served",
    "attention_stats",
    "cap_step",
    "capped_lookup",
    "classify",
    "co_engagement_pairs",
    "decayed",
    "decayed_vector",
    "decode_list",
    "decode_row",
    "encode_row",
    "exposure_index",
    "fold_in",
    "followed_behaviour",
    "item_cap",
    "journal_dir",
    "merge_events",
    "merge_rows",
    "needs_refold",
    "pacing_step",
    "rate_per_day",
    "read_journal",
    "read_spooled",
    "recompute",
    "sample_rows",
    "spool_dir",
    "summed_weights",
    "top_neighbours",
    "trend_increments",
    "validate_event",
    "water_level",
]
