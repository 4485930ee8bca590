"""The hard rules, defined once: who a member may be shown (the filters stage).

A members-only dating app never shows a member someone they are not eligible to see, served,
degraded, cached or experimental. :class:`HardRules` holds everything the rules need about one
viewer (their ``users`` document, :class:`~opendisco.signals.UserState` and
:class:`~opendisco.signals.MemberBlocks`) and applies them three ways, from this one
definition:

* :meth:`HardRules.engine_params` — the parameters of the templates' ``eligibility`` and
  ``exclusions`` fragments (``queries/templates/_partials.json``): the engine never returns
  a forbidden item;
* :class:`HardRulesFilter` — the filters stage of the served pipeline re-checks every hit in
  process (defence in depth: a template edit cannot silently drop a rule);
* :meth:`HardRules.broken` on items from any other list — the degraded fallback filters its
  per-segment lists per member with it.

The rules (:class:`Rule`), in the order they are checked:

``available``     the item is available and not deleted
``self``          never the member's own profile (or anything they own)
``blocks``        never a hidden item; never a member blocked by, or blocking, the viewer
``seen``          never an item already seen, liked, passed or served earlier in the session
                  (the state's last ``max_seen`` seen ids; its last ``max_liked`` likes)
``eligibility``   two-sided: the candidate's gender and age preferences admit the viewer, and
                  the viewer's admit the candidate (profiles); a preference that cannot be
                  confirmed (viewer's gender or age unknown; an age bound stated as no age,
                  a gender preference naming no gender, either side's) excludes
``exposure_cap``  never an item over its exposure cap (in the engine: the ``_capped`` list;
                  in process the items whose impressions known to the process reach their
                  cap — ``serving._caps`` — and the fallback's cap list: ``capped_ids``)

Without a member (anonymous ``similar``/``search``) only ``available``, ``seen`` (the caller's
exclusions) and ``exposure_cap`` apply.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from opendisco._domain import MEMBER_RULE_FIELDS, maybe_profile, readable_id
from opendisco._exceptions import DocumentInvalid, SearchTooLarge, TemplateParamError
from opendisco.ingest import exposure_cap
from opendisco.queries import Candidate, Template
from opendisco.signals import MemberBlocks, UserState

if TYPE_CHECKING:
    from ._types import CandidatePlan

__all__ = [
    "AGE_DOMAIN",
    "HIT_FIELDS",
    "RULE_FIELDS",
    "HardRules",
    "HardRulesFilter",
    "Rule",
    "stored_rule_fields",
]

log = logging.getLogger("opendisco.serving")


class Rule(StrEnum):
    AVAILABLE = "available"
    SELF = "self"
    BLOCKS = "blocks"
    SEEN = "seen"
    ELIGIBILITY = "eligibility"
    EXPOSURE_CAP = "exposure_cap"


#: the item fields the rules read (what a fresh re-check fetches from the store)
RULE_FIELDS = ("kind", "owner_id", "available", "deleted", *MEMBER_RULE_FIELDS)
#: the fields every candidate hit carries whatever its template's ``_source`` says: the rule
#: fields and the item's own ``exposure_cap``, which the in-process cap check reads from the
#: hit (``serving._caps``; trimmed away, the default cap applied: 10 of 10 members were shown
#: an item with its own cap of 3)
HIT_FIELDS = (*RULE_FIELDS, "exposure_cap")


def stored_rule_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The rule fields of an item as MongoDB stores it and its own ``exposure_cap`` (the
    :data:`HIT_FIELDS`), with the defaults ingest gives absent ones (``available`` true,
    ``deleted`` false: ``opendisco.ingest.validate_item``; no ``exposure_cap``: None, the
    default cap applies, ``signals.item_cap``). A stored ``deleted`` other than false (``0``,
    ``""``, ``[]``: what ingest refuses) deletes (read as ``bool``, those items were served on
    the engine's copy). A stored cap ingest would refuse is left out:
    the engine's copy holds the last version ingest indexed, whose cap then applies (read as
    no cap, a cap stored as ``"3"`` had the default cap of 200 win over the engine's 3)."""
    out = {f: doc.get(f) for f in HIT_FIELDS}
    out["available"] = True if doc.get("available") is None else doc.get("available")
    deleted = doc.get("deleted")
    out["deleted"] = deleted is not None and deleted is not False
    try:
        out["exposure_cap"] = exposure_cap(doc)
    except DocumentInvalid:
        del out["exposure_cap"]
    return out


#: stored integers are held within ±2⁵³ (a double of 1e300 in a users document is a bound no
#: age reaches, and stays one: clamped, never dropped, and still encodable in a MongoDB query)
_BIG = 2**53


def _int(value: Any) -> int | None:
    """An age as stored, or None when it holds none. A fraction holds none (ingest refuses
    it, as it accepts a whole double: ``ingest._schema``); truncated, a ``pref_age_min`` of
    30.5 admitted a member of 30, a profile aged 35.5 a viewer who wants 35 at most."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and not value.is_integer():  # NaN and the infinities too
        return None
    try:
        return max(-_BIG, min(_BIG, int(value)))
    except (TypeError, ValueError):
        return None


def _bound(value: Any, closed: int) -> int | None:
    """An age bound as stored: None when none is stated, else the age it holds; a bound that
    is stated but holds no age (a word, a boolean, a list, a document, a fraction, an
    infinity: nothing ingest would index) is ``closed``, a bound no age meets (fail closed:
    whom it admits cannot be confirmed; read as no bound, a profile whose stored
    ``pref_age_min`` was ``"forty"`` was shown to members of every age)."""
    if value is None:
        return None
    age = _int(value)
    return closed if age is None else age


#: the domain of the templates' age and gender parameters (``queries/templates/_partials.json``:
#: ``viewer_age``, ``viewer_pref_age_min|max``, ``viewer_gender``, ``viewer_pref_genders``)
AGE_DOMAIN = (0, 150)
_MAX_LEN = 64
_MAX_GENDERS = 16


def _in_age_domain(age: int) -> bool:
    return AGE_DOMAIN[0] <= age <= AGE_DOMAIN[1]


def _clamp_age(age: int | None) -> int | None:
    return None if age is None else min(max(age, AGE_DOMAIN[0]), AGE_DOMAIN[1])


#: what a gender preference stated but naming no gender reads as: a gender no member has,
#: so the preference admits nobody (:func:`_admits` never matches it, and the engine's
#: ``terms`` on it matches no profile)
NO_GENDER = "\x00no gender"


def _genders(value: Any) -> frozenset[str]:
    """A gender preference as stored: none stated (None, an empty list) is empty, every
    gender admitted; else the genders its strings name (one string: that gender). Stated but
    naming no gender (``""``, ``[None]``, ``[1]``, a number, a document: nothing ingest would
    index) is ``{NO_GENDER}``: fail closed, like :func:`_bound` (read as no preference, a
    profile whose stored ``pref_genders`` was ``[null]`` or ``""`` was shown to members of
    every gender)."""
    if value is None or (isinstance(value, list | tuple) and not value):
        return frozenset()
    named = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    return frozenset(g for g in named if isinstance(g, str) and g) or frozenset([NO_GENDER])


def _admits(wants: frozenset[str], gender: Any) -> bool:
    """Whether the stated gender preference ``wants`` admits ``gender`` (a gender as stored:
    a list or a document here is no gender)."""
    return isinstance(gender, str) and gender != NO_GENDER and gender in wants


@dataclass(frozen=True)
class HardRules:
    """What the hard rules know about one viewer (pure; see the module docstring)."""

    viewer_id: str | None = None  # None: anonymous (no member, no eligibility)
    profile_id: str | None = None
    gender: str | None = None
    age: int | None = None
    pref_genders: frozenset[str] = frozenset()
    pref_age_min: int | None = None
    pref_age_max: int | None = None
    blocked_ids: frozenset[str] = frozenset()  # items the viewer hid
    seen_ids: frozenset[str] = frozenset()  # seen, liked, passed; the caller's exclusions
    blocked_owners: frozenset[str] = frozenset()  # members blocked either way
    #: items over their exposure cap; None when unknown here (the engine checks caps)
    capped_ids: frozenset[str] | None = field(default=None, repr=False)

    @property
    def member(self) -> bool:
        return self.viewer_id is not None

    @classmethod
    def anonymous(cls, exclude: Iterable[str] = ()) -> HardRules:
        return cls(seen_ids=frozenset(str(i) for i in exclude))

    @classmethod
    def for_member(
        cls,
        user_id: str,
        user: Mapping[str, Any] | None,
        state: UserState | None,
        blocks: MemberBlocks | None,
        exclude: Iterable[str] = (),
    ) -> HardRules:
        """The rules of member ``user_id`` from their ``users`` document (None: unknown
        member — never registered, or deleted —, every preference unconfirmable: their own
        gender and age unknown, and whom they want stated as nobody, so no profile is shown
        to them; read as "no preference", a profile stating none was shown to a member whose
        ``users`` document was deleted), state and blocks."""
        unknown = user is None
        user = user or {}
        seen = {str(i) for i in exclude}
        blocked: frozenset[str] = frozenset()
        if state is not None:
            seen.update(state.seen)
            seen.update(state.liked)  # for good: a like outlives the seen window
            seen.update(str(e["id"]) for e in (*state.positives, *state.negatives) if e.get("id"))
            blocked = frozenset(state.blocked)
        gender = user.get("gender")
        return cls(
            viewer_id=user_id,
            profile_id=str(user["profile_id"]) if user.get("profile_id") else None,
            gender=str(gender) if gender else None,
            age=_int(user.get("age")),
            pref_genders=frozenset([NO_GENDER]) if unknown else _genders(user.get("pref_genders")),
            pref_age_min=_BIG if unknown else _bound(user.get("pref_age_min"), _BIG),
            pref_age_max=-_BIG if unknown else _bound(user.get("pref_age_max"), -_BIG),
            blocked_ids=blocked,
            seen_ids=frozenset(seen),
            blocked_owners=blocks.either_way if blocks is not None else frozenset(),
        )

    @property
    def admits_no_profile(self) -> bool:
        """Whether this member's own preferences admit no profile at all (no ``users``
        document, a gender preference naming no gender, an age range no age of
        :data:`AGE_DOMAIN` is in): their answer holds no member, served or degraded, and that
        is an answer, not a failure."""
        lo = AGE_DOMAIN[0] if self.pref_age_min is None else self.pref_age_min
        hi = AGE_DOMAIN[1] if self.pref_age_max is None else self.pref_age_max
        no_age = max(lo, AGE_DOMAIN[0]) > min(hi, AGE_DOMAIN[1])
        return self.member and (self.pref_genders == frozenset([NO_GENDER]) or no_age)

    def admits_none_of(self, items: Iterable[Mapping[str, Any]]) -> bool:
        """Whether these items hold nothing this member's own preferences could admit: the
        member admits no profile and every item is, or may be, a profile (an empty answer is
        then the answer; a catalogue with other kinds holds items they could be shown)."""
        return self.admits_no_profile and all(maybe_profile(it.get("kind")) for it in items)

    def with_capped(self, capped: Iterable[str] | None) -> HardRules:
        return replace(self, capped_ids=None if capped is None else frozenset(capped))

    # -- the engine's half ------------------------------------------------------------------
    @property
    def exclude_ids(self) -> list[str]:
        own = {self.profile_id} if self.profile_id else set()
        return sorted(self.blocked_ids | self.seen_ids | own)

    def engine_params(self, template: Template | None = None) -> dict[str, Any]:
        """The template parameters of the ``eligibility`` and ``exclusions`` fragments (they
        override any tuned parameter of the same name).

        With ``template``, each of them it declares is checked against its declared bounds:
        a member's stored lists longer than the engine's query carries (over 20,000 excluded
        ids, 50,000 members blocking either way: ``_partials.json``) are a query too large for
        the engine, :class:`SearchTooLarge`, so the API degrades and its fallback, which
        checks every rule in process whatever the lengths, answers (the template's
        ``TemplateParamError``, HTTP 422, blamed the caller for the member's stored lists, on
        every path but a degraded ``similar``: a member blocked by 60,000 others had no answer).

        A member's stored values outside the templates' parameter domain (an age of 200, a
        gender of 100 characters: odd ``users`` documents, not the caller's input) never fail
        the request: the viewer's own age or gender becomes unknown (fail closed: candidates
        with preferences on it are excluded), preference bounds are clamped into the domain
        and over-long genders dropped (a preference left naming none is :data:`NO_GENDER`:
        dropped to none, it admitted every gender). The in-process filter keeps the exact
        stored values, so whatever the engine admits beyond them is still removed before
        anything is served."""
        m = self.member
        age = self.age if self.age is not None and _in_age_domain(self.age) else None
        gender = self.gender if self.gender is not None and len(self.gender) <= _MAX_LEN else None
        prefs = sorted(g for g in self.pref_genders if len(g) <= _MAX_LEN)[:_MAX_GENDERS]
        if self.pref_genders and not prefs:
            prefs = [NO_GENDER]
        params = {
            "exclude_ids": self.exclude_ids,
            "viewer_id": self.viewer_id,
            "exclude_owners": sorted(self.blocked_owners),
            "viewer_gender": gender if m else None,
            "viewer_age": age if m else None,
            "viewer_gender_unknown": m and gender is None,
            "viewer_age_unknown": m and age is None,
            "viewer_pref_genders": prefs if m else [],
            "viewer_pref_age_min": _clamp_age(self.pref_age_min) if m else None,
            "viewer_pref_age_max": _clamp_age(self.pref_age_max) if m else None,
        }
        specs = template.specs if template is not None else {}
        for name in specs.keys() & params.keys():
            try:
                specs[name].coerce(params[name])
            except TemplateParamError as exc:  # the counts, never the ids (who blocked them)
                raise SearchTooLarge(f"the rules of {self.viewer_id!r}: {exc}") from exc
        return params

    # -- in process -------------------------------------------------------------------------
    def eligible(self, item: Mapping[str, Any]) -> bool:
        """Two-sided preferences (what the ``eligibility`` fragment matches)."""
        if not self.member:
            return True
        wants = _genders(item.get("pref_genders"))
        if wants and not _admits(wants, self.gender):
            return False
        lo = _bound(item.get("pref_age_min"), _BIG)
        hi = _bound(item.get("pref_age_max"), -_BIG)
        if lo is not None and (self.age is None or self.age < lo):
            return False
        if hi is not None and (self.age is None or self.age > hi):
            return False
        if not maybe_profile(item.get("kind")):
            return True
        if self.pref_genders and not _admits(self.pref_genders, item.get("gender")):
            return False
        age = _int(item.get("age"))
        if self.pref_age_min is not None and (age is None or age < self.pref_age_min):
            return False
        return not (self.pref_age_max is not None and (age is None or age > self.pref_age_max))

    def broken(self, item_id: str, item: Mapping[str, Any]) -> Rule | None:
        """The first rule ``item`` breaks for this viewer, or None when it may be shown."""
        if item.get("available") is not True or item.get("deleted") is True:
            return Rule.AVAILABLE
        owner = item.get("owner_id")
        if self.member and owner is not None and not readable_id(owner):
            return Rule.BLOCKS  # whose it is cannot be read: not confirmed unblocked, nor theirs
        owner = str(owner) if owner is not None else None
        if self.member and (item_id == self.profile_id or owner == self.viewer_id):
            return Rule.SELF
        if item_id in self.blocked_ids or (owner is not None and owner in self.blocked_owners):
            return Rule.BLOCKS
        if item_id in self.seen_ids:
            return Rule.SEEN
        if not self.eligible(item):
            return Rule.ELIGIBILITY
        if self.capped_ids is not None and item_id in self.capped_ids:
            return Rule.EXPOSURE_CAP
        return None

    def allows(self, item_id: str, item: Mapping[str, Any]) -> bool:
        return self.broken(item_id, item) is None


@dataclass
class HardRulesFilter:
    """The filters stage: drops every candidate :attr:`CandidatePlan.rules` forbids. The
    engine applied the same rules already, so anything dropped here is logged (a template
    that lost a rule, or an index behind its source) — but for ``exposure_cap``: the items
    this process knows reached their cap since the engine's cap list last changed
    (``serving._caps``) are expected."""

    name: str = "hard_rules"

    def keep(self, plan: CandidatePlan, candidates: Sequence[Candidate]) -> list[Candidate]:
        rules = plan.rules
        kept: list[Candidate] = []
        dropped: Counter[str] = Counter()
        for c in candidates:
            rule = rules.broken(c.id, c.item)
            if rule is None:
                kept.append(c)
            else:
                dropped[rule.value] += 1
        if dropped:
            plan.filtered.update(dropped)
        if unexpected := {r: n for r, n in dropped.items() if r != Rule.EXPOSURE_CAP}:
            log.warning("hard rules dropped engine hits for %s: %s", plan.user_id, unexpected)
        return kept
