"""The market step: sessions (finite attention), likes, the likes-you queue (finite reply
capacity), mutual likes, matches, messages and replies.

One simulated day:

1. **Sessions.** Each member opens the app with their ``activity`` probability. An active
   viewer is shown the ``slots`` best unseen candidates of their ranked pool (finite
   attention: candidates compete for these slots); in the *independent* exposure mode
   (``slots=None``, the no-interference control) each pair is shown independently with a
   probability set by its own ranking score, so no candidate takes a slot from another.
2. **Likes.** The viewer likes a shown candidate with probability ``p_like`` (a fresh draw per
   impression; a pair is shown at most once in slot mode). A like is a *proposal*.
   With ``seen_days`` the seen memory is bounded: a candidate passed on (shown, not liked)
   may be shown again ``seen_days`` days later (:meth:`Market.forget`); without it a pair is
   shown at most once.
3. **Instant mutual likes.** With ``instant_matches``, a proposal to someone who already
   likes the proposer is reciprocated at once (no review needed) — also for proposals
   waiting in a queue when the receiver likes the proposer in their own session.
4. **Reviews.** Each active member reviews up to their capacity of waiting proposals (oldest
   first, ties in random order) and likes the proposer back with probability ``p_like`` of
   the reverse pair. Unreviewed proposals wait; after ``expiry_days`` they expire. With
   ``capacity=None`` every waiting proposal of an active member is reviewed.
5. **Matches.** The first reciprocated like of a pair is a match; its proposer sends a first
   message with ``message_rate``; the receiver replies with ``reply_rate``.

Interference comes from (1) slots and (4) capacity; the no-interference control turns off
both, and instant matches (which tie a proposal's fate to the receiver's own deck).

Every random number is a common random number (:mod:`._rng`): keyed by the event, so
all-treated, all-control and experiment worlds share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._population import Population
from ._rng import Stream, uniform

__all__ = ["Market", "Outcomes"]

PENDING, RECIPROCATED, DECLINED, EXPIRED = 0, 1, 2, 3


@dataclass
class Outcomes:
    """What happened, as aligned arrays (one row per impression / proposal / match)."""

    imp_pair: np.ndarray  # pair index (viewer → candidate)
    imp_day: np.ndarray
    imp_treated: np.ndarray  # the pair got the treatment when shown
    imp_liked: np.ndarray  # bool
    imp_mutual: np.ndarray  # bool: the like was reciprocated (a mutual like)
    prop_imp: np.ndarray  # impression row of each proposal
    prop_status: np.ndarray  # PENDING / RECIPROCATED / DECLINED / EXPIRED
    prop_resolved: np.ndarray  # day resolved (-1 pending)
    prop_instant: np.ndarray  # reciprocated without a review
    match_pair: np.ndarray  # the pair (either direction) that matched
    match_day: np.ndarray
    match_message: np.ndarray  # bool
    match_reply: np.ndarray  # bool
    active: np.ndarray  # (days, n) bool: who opened the app each day
    first_day: int = 0  # the first simulated day these rows cover

    @property
    def impressions(self) -> int:
        return int(self.imp_pair.shape[0])


@dataclass
class Market:
    """Mutable market state; :meth:`day` advances it by one day and records what happened."""

    pop: Population
    seed: int
    capacity: float | None
    expiry_days: int
    instant_matches: bool
    message_rate: float
    reply_rate: float
    seen_days: int | None = None  # a pass is forgotten after this many days (None: never)
    liked: np.ndarray = field(init=False)  # (P,) the viewer has liked the candidate
    seen: np.ndarray = field(init=False)  # (P,) shown to the viewer (and not forgotten)
    shown_day: np.ndarray = field(init=False)  # (P,) last day shown (-1: never)
    matched: np.ndarray = field(init=False)  # (P,) by the smaller of the pair's two indices
    likes_received: np.ndarray = field(init=False)  # (n,) cumulative
    # the queue of waiting proposals
    q_pair: np.ndarray = field(init=False)
    q_day: np.ndarray = field(init=False)
    q_prop: np.ndarray = field(init=False)  # proposal row
    # the log
    _imp: list[tuple[np.ndarray, int, np.ndarray]] = field(init=False)
    _props: list[np.ndarray] = field(init=False)  # impression rows that were likes
    _resolved: list[tuple[np.ndarray, int, int]] = field(init=False)  # (prop rows, day, status)
    _instant: list[np.ndarray] = field(init=False)
    _matches: list[tuple[np.ndarray, int]] = field(init=False)
    _active: list[np.ndarray] = field(init=False)
    _n_imp: int = field(init=False)
    _n_prop: int = field(init=False)
    _first_day: int = field(init=False)

    def __post_init__(self) -> None:
        P, n = self.pop.n_pairs, self.pop.n
        self.liked = np.zeros(P, dtype=bool)
        self.seen = np.zeros(P, dtype=bool)
        self.shown_day = np.full(P, -1, dtype=np.int64)
        self.matched = np.zeros(P, dtype=bool)
        self.likes_received = np.zeros(n)
        self.q_pair = np.zeros(0, np.int64)
        self.q_day = np.zeros(0, np.int64)
        self.q_prop = np.zeros(0, np.int64)
        self.start_log(0)

    def start_log(self, first_day: int) -> None:
        """Forget the log (not the state): what follows is recorded from ``first_day``.
        Proposals still waiting from before are resolved but not logged again."""
        self._imp, self._props, self._resolved, self._instant = [], [], [], []
        self._matches, self._active = [], []
        self._n_imp = self._n_prop = 0
        self._first_day = first_day
        self.q_prop = np.full(self.q_pair.shape[0], -1, dtype=np.int64)

    def copy(self) -> Market:
        out = Market(
            self.pop, self.seed, self.capacity, self.expiry_days, self.instant_matches,
            self.message_rate, self.reply_rate, self.seen_days,
        )  # fmt: skip
        names = ("liked", "seen", "shown_day", "matched", "likes_received", "q_pair", "q_day")
        for name in names:
            setattr(out, name, getattr(self, name).copy())
        out.start_log(self._first_day)
        return out

    def last_day(self) -> tuple[np.ndarray, np.ndarray]:
        """The last day's impressions and the pairs liked among them."""
        shown, _, _ = self._imp[-1]
        return shown, shown[self._props[-1] - (self._n_imp - shown.shape[0])]

    def active_today(self, day: int) -> np.ndarray:
        return uniform(self.seed, Stream.ACTIVE, np.arange(self.pop.n), day) < self.pop.activity

    def forget(self, day: int) -> np.ndarray:
        """Bounded seen memory: pairs shown ``seen_days`` or more days ago and not liked
        become unseen (a pass is forgotten; a like never is). Returns the viewers who got
        pairs back, whose decks must be scanned from the top again."""
        if self.seen_days is None:
            return np.zeros(0, dtype=np.int64)
        old = self.seen & (self.shown_day <= day - self.seen_days) & ~self.liked
        if not old.any():
            return np.zeros(0, dtype=np.int64)
        self.seen[old] = False
        return np.unique(self.pop.pair_viewer[old])

    # -- one day ---------------------------------------------------------------------------
    def day(self, day: int, active: np.ndarray, shown: np.ndarray, treated: np.ndarray) -> None:
        """Advance one day: ``shown`` are today's impressions (pair indices, a pair at most
        once per day), ``treated`` whether each got the treatment."""
        pop = self.pop
        self._active.append(active)
        self.seen[shown] = True
        self.shown_day[shown] = day
        rows = self._n_imp + np.arange(shown.shape[0])
        self._n_imp += shown.shape[0]
        liked = uniform(self.seed, Stream.LIKE, shown, day) < pop.p_like[shown]
        self._imp.append((shown, day, treated))
        new = shown[liked]
        new_prop = self._n_prop + np.arange(new.shape[0])
        self._n_prop += new.shape[0]
        self._props.append(rows[liked])
        self.likes_received += np.bincount(pop.pair_candidate[new], minlength=pop.n)

        waiting_pair, waiting_day, waiting_prop = new, np.full(new.shape[0], day), new_prop
        if self.instant_matches:
            # to someone who already likes the proposer: mutual at once
            inst = self.liked[pop.reverse[new]]
            self._resolve(new_prop[inst], new[inst], day, RECIPROCATED, instant=True)
            waiting_pair, waiting_day, waiting_prop = (
                new[~inst],
                waiting_day[~inst],
                new_prop[~inst],
            )
        self.liked[new] = True
        self.q_pair = np.concatenate([self.q_pair, waiting_pair])
        self.q_day = np.concatenate([self.q_day, waiting_day])
        self.q_prop = np.concatenate([self.q_prop, waiting_prop])
        if self.instant_matches and self.q_pair.size:
            # waiting proposals whose receiver liked the proposer today
            inst = self.liked[pop.reverse[self.q_pair]]
            if inst.any():
                self._resolve(self.q_prop[inst], self.q_pair[inst], day, RECIPROCATED, True)
                self._drop(~inst)
        self._review(day, active)
        expired = day - self.q_day >= self.expiry_days
        if expired.any():
            self._resolve(self.q_prop[expired], self.q_pair[expired], day, EXPIRED)
            self._drop(~expired)

    def _drop(self, keep: np.ndarray) -> None:
        self.q_pair, self.q_day, self.q_prop = (
            self.q_pair[keep],
            self.q_day[keep],
            self.q_prop[keep],
        )

    def _review(self, day: int, active: np.ndarray) -> None:
        pop = self.pop
        if not self.q_pair.size:
            return
        receiver = pop.pair_candidate[self.q_pair]
        can = active[receiver]
        if self.capacity is not None:
            # oldest first, ties in random order: one int64 key (receiver | day | tie)
            tie = (uniform(self.seed, Stream.ORDER, self.q_pair, self.q_day) * 2**30).astype(
                np.int64
            )
            key = (receiver << 42) | ((self.q_day + 1) << 30) | tie
            order = np.argsort(key)
            r = receiver[order]
            start = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
            rank = np.arange(r.shape[0]) - np.repeat(start, np.diff(np.append(start, r.shape[0])))
            cap = self.capacity * pop.capacity_scale[r]
            whole = np.floor(cap)
            cap = whole + (uniform(self.seed, Stream.CAPACITY, r, day) < cap - whole)
            within = np.empty_like(can)
            within[order] = rank < cap
            can &= within
        if not can.any():
            return
        pair = self.q_pair[can]
        back = (
            uniform(self.seed, Stream.REVIEW, pair, self.q_day[can]) < pop.p_like[pop.reverse[pair]]
        )
        self._resolve(self.q_prop[can][back], pair[back], day, RECIPROCATED)
        self._resolve(self.q_prop[can][~back], pair[~back], day, DECLINED)
        self.liked[pop.reverse[pair[back]]] = True
        self._drop(~can)

    def _resolve(
        self, props: np.ndarray, pairs: np.ndarray, day: int, status: int, instant: bool = False
    ) -> None:
        if not pairs.size:
            return
        logged = props >= 0
        self._resolved.append((props[logged], day, status))
        if instant:
            self._instant.append(props[logged])
        if status != RECIPROCATED:
            return
        key = np.minimum(pairs, self.pop.reverse[pairs])
        key, first = np.unique(key, return_index=True)
        fresh = ~self.matched[key]
        self.matched[key[fresh]] = True
        if fresh.any():
            self._matches.append((pairs[first[fresh]], day))

    # -- the record ------------------------------------------------------------------------
    def outcomes(self) -> Outcomes:
        n_imp, n_prop = self._n_imp, self._n_prop
        imp_pair = _cat([p for p, _, _ in self._imp], np.int64)
        imp_day = _cat([np.full(p.shape[0], d) for p, d, _ in self._imp], np.int64)
        imp_treated = _cat([t for _, _, t in self._imp], bool)
        prop_imp = _cat(self._props, np.int64)
        status = np.zeros(n_prop, dtype=np.int8)
        resolved = np.full(n_prop, -1, dtype=np.int64)
        for props, day, st in self._resolved:
            status[props] = st
            resolved[props] = day
        instant = np.zeros(n_prop, dtype=bool)
        for props in self._instant:
            instant[props] = True
        liked = np.zeros(n_imp, dtype=bool)
        liked[prop_imp] = True
        mutual = np.zeros(n_imp, dtype=bool)
        mutual[prop_imp[status == RECIPROCATED]] = True
        m_pair = _cat([p for p, _ in self._matches], np.int64)
        m_day = _cat([np.full(p.shape[0], d) for p, d in self._matches], np.int64)
        msg = uniform(self.seed, Stream.MESSAGE, m_pair) < self.message_rate
        reply = msg & (uniform(self.seed, Stream.REPLY, m_pair) < self.reply_rate)
        active = np.array(self._active) if self._active else np.zeros((0, self.pop.n), bool)
        return Outcomes(
            imp_pair, imp_day, imp_treated, liked, mutual, prop_imp, status, resolved, instant,
            m_pair, m_day, msg, reply, active, self._first_day,
        )  # fmt: skip


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
