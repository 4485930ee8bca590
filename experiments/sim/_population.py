"""A seeded population of members who are both viewers and candidates.

Every member lives in one market (a city: nobody is shown someone from another market, the
product's location filter) and has

* a gender, an age and preferences over both (eligibility is two-sided, exactly the
  product's hard rule: a pair exists only when each admits the other, never oneself);
* latent two-sided preferences: ``traits`` (what the member is) and ``taste`` (what the
  member likes) as unit vectors around one of a few interest types, an ``attractiveness``
  (how liked the member is) and a ``pickiness`` (how rarely the member likes);
* what the ranker can observe: a profile embedding (``content``: the traits plus noise), a
  ``quality`` score and a ``prior`` popularity (both noisy attractiveness), the stated
  preference vector (taste plus more noise), the profile's age and its interest type;
* behaviour: how often the member opens the app (``activity``) and how many inbound likes
  the member reviews per day (``capacity``, scaled by the market regime).

P(v likes c) = σ(like_bias + attractiveness[c] − pickiness[v] + taste_weight · cos(taste[v],
traits[c])) — the same function whether v meets c in the deck or reviews c's like.

Eligible ordered pairs are stored once, grouped by viewer (CSR): ``pair_viewer``,
``pair_candidate``, ``ptr`` (pairs of viewer v are ``ptr[v]:ptr[v+1]``), ``p_like`` and
``reverse`` (the index of the pair the other way round; eligibility is symmetric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Population", "PopulationConfig", "generate_population"]

_GENDERS = 3  # f, m, x


class PopulationConfig(BaseModel):
    """Size and preference structure of a simulated population."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    markets: int = Field(30, ge=1, description="Cities; members only meet within theirs.")
    market_size: int = Field(600, ge=2, description="Members per market.")
    dim: int = Field(16, ge=2, description="Dimensions of the latent taste/trait vectors.")
    types: int = Field(8, ge=1, description="Interest types (the profile's category).")
    type_noise: float = Field(0.7, ge=0.0, description="Spread of traits/taste around a type.")
    homophily: float = Field(0.5, ge=0.0, le=1.0, description="P(taste type = own type).")
    like_bias: float = Field(-1.4, description="Log-odds of a like at average attractiveness.")
    taste_weight: float = Field(2.5, ge=0.0, description="Log-odds per unit of taste match.")
    attractiveness_sd: float = Field(1.0, ge=0.0)
    pickiness_sd: float = Field(0.5, ge=0.0)
    age_mean: float = Field(31.0, ge=19.0, description="Mean age (ages are 19 + gamma).")
    age_sd: float = Field(7.0, gt=0.0, description="Spread of ages.")
    age_pref_min: int = Field(10, ge=0, description="Narrowest half-width of an age preference.")
    age_pref_max: int = Field(25, ge=0, description="Widest half-width of an age preference.")
    hetero_share: float = Field(0.8, ge=0.0, le=1.0, description="Members with the usual prefs.")
    observe_noise: float = Field(0.35, ge=0.0, description="Noise of the profile embedding.")
    stated_noise: float = Field(1.0, ge=0.0, description="Noise of the stated preferences.")
    activity_mean: float = Field(0.7, gt=0.0, lt=1.0, description="Mean P(opens the app)/day.")
    capacity_sd: float = Field(0.5, ge=0.0, description="Log-sd of reply capacity per member.")


@dataclass(frozen=True)
class Population:
    """Members (index ``0..n-1``) and their eligible pairs; see the module docstring."""

    config: PopulationConfig
    seed: int
    ids: list[str]
    market: np.ndarray  # (n,) int
    gender: np.ndarray  # (n,) int 0=f 1=m 2=x
    age: np.ndarray  # (n,) int
    admits_gender: np.ndarray  # (n, 3) bool: genders the member accepts
    age_lo: np.ndarray  # (n,) youngest accepted
    age_hi: np.ndarray  # (n,) oldest accepted
    kind: np.ndarray  # (n,) int interest type (category)
    traits: np.ndarray  # (n, dim) unit
    taste: np.ndarray  # (n, dim) unit
    attractiveness: np.ndarray
    pickiness: np.ndarray
    content: np.ndarray  # (n, dim) unit: the observed profile embedding
    stated: np.ndarray  # (n, dim) unit: the stated preference vector
    quality: np.ndarray  # in (0, 1)
    prior: np.ndarray  # >= 0: popularity before any history
    age_days: np.ndarray  # profile age
    activity: np.ndarray  # P(active) per day
    capacity_scale: np.ndarray  # multiplies the regime's reply capacity
    ptr: np.ndarray  # (n+1,)
    pair_viewer: np.ndarray  # (P,)
    pair_candidate: np.ndarray  # (P,)
    p_like: np.ndarray  # (P,) P(viewer likes candidate)
    reverse: np.ndarray  # (P,) index of (candidate, viewer)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_pairs(self) -> int:
        return int(self.pair_viewer.shape[0])

    def pool(self, viewer: int) -> np.ndarray:
        """Pair indices of ``viewer`` (its eligible candidates are ``pair_candidate`` of them)."""
        return np.arange(self.ptr[viewer], self.ptr[viewer + 1])

    def pool_sizes(self) -> np.ndarray:
        return np.diff(self.ptr)


def _unit(M: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(M, axis=-1, keepdims=True)
    return M / np.where(norm > 0, norm, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _preferences(rng: np.random.Generator, gender: np.ndarray, share: float) -> np.ndarray:
    """(n, 3) bool: genders each member admits (mostly the usual, else a random subset)."""
    n = gender.shape[0]
    usual = np.zeros((n, _GENDERS), dtype=bool)
    usual[gender == 0, 1] = True
    usual[gender == 1, 0] = True
    usual[gender == 2, :] = True
    other = rng.random((n, _GENDERS)) < 0.5
    empty = ~other.any(axis=1)
    other[empty, rng.integers(0, _GENDERS, empty.sum())] = True
    keep = rng.random(n) < share
    return np.where(keep[:, None], usual, other)


def generate_population(config: PopulationConfig | None = None, seed: int = 0) -> Population:
    """Members, observable profiles and eligible pairs; deterministic for ``(config, seed)``."""
    cfg = config or PopulationConfig()
    rng = np.random.default_rng([seed, 0x51D])
    n = cfg.markets * cfg.market_size
    market = np.repeat(np.arange(cfg.markets), cfg.market_size)
    gender = rng.choice(_GENDERS, size=n, p=[0.45, 0.45, 0.10])
    prefs = _preferences(rng, gender, cfg.hetero_share)
    shape = ((cfg.age_mean - 19.0) / cfg.age_sd) ** 2
    age = np.minimum(99, 19 + np.round(rng.gamma(shape, cfg.age_sd**2 / (cfg.age_mean - 19.0), n)))
    age = age.astype(np.int64)
    lo = np.maximum(18, age - rng.integers(cfg.age_pref_min, cfg.age_pref_max + 1, size=n))
    hi = age + rng.integers(cfg.age_pref_min, cfg.age_pref_max + 1, size=n)

    centres = _unit(rng.normal(size=(cfg.types, cfg.dim)))
    kind = rng.integers(0, cfg.types, size=n)
    liked_kind = np.where(rng.random(n) < cfg.homophily, kind, rng.integers(0, cfg.types, n))
    spread = cfg.type_noise / np.sqrt(cfg.dim)  # noise of norm ≈ type_noise
    traits = _unit(centres[kind] + spread * rng.normal(size=(n, cfg.dim)))
    taste = _unit(centres[liked_kind] + spread * rng.normal(size=(n, cfg.dim)))
    attractiveness = cfg.attractiveness_sd * rng.normal(size=n)
    pickiness = cfg.pickiness_sd * rng.normal(size=n)
    content = _unit(traits + cfg.observe_noise * rng.normal(size=(n, cfg.dim)) / np.sqrt(cfg.dim))
    stated = _unit(taste + cfg.stated_noise * rng.normal(size=(n, cfg.dim)) / np.sqrt(cfg.dim))
    quality = _sigmoid(0.7 * attractiveness + 0.7 * rng.normal(size=n))
    prior = np.round(np.exp(0.8 * attractiveness + 0.8 * rng.normal(size=n)), 3)
    age_days = rng.uniform(0, 720, size=n)
    a = cfg.activity_mean * 6.0
    activity = rng.beta(a, 6.0 - a, size=n)
    capacity_scale = np.exp(cfg.capacity_sd * rng.normal(size=n) - cfg.capacity_sd**2 / 2)

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for m in range(cfg.markets):
        idx = np.arange(m * cfg.market_size, (m + 1) * cfg.market_size)
        admits = prefs[idx][:, gender[idx]] & (
            (lo[idx][:, None] <= age[idx][None, :]) & (age[idx][None, :] <= hi[idx][:, None])
        )
        ok = admits & admits.T
        np.fill_diagonal(ok, False)
        r, c = np.nonzero(ok)  # row-major: grouped by viewer, candidates ascending
        rows.append(idx[r])
        cols.append(idx[c])
    pv = np.concatenate(rows)
    pc = np.concatenate(cols)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, pv + 1, 1)
    ptr = np.cumsum(ptr)
    logit = (
        cfg.like_bias
        + attractiveness[pc]
        - pickiness[pv]
        + cfg.taste_weight * np.einsum("ij,ij->i", taste[pv], traits[pc])
    )
    # the reverse pair: (c, v) sits in c's block at the rank of v among c's candidates
    key = pv * n + pc
    reverse = np.searchsorted(key, pc * n + pv)
    width = len(str(n - 1))
    return Population(
        config=cfg,
        seed=seed,
        ids=[f"m{i:0{width}d}" for i in range(n)],
        market=market,
        gender=gender,
        age=age,
        admits_gender=prefs,
        age_lo=lo,
        age_hi=hi,
        kind=kind,
        traits=traits,
        taste=taste,
        attractiveness=attractiveness,
        pickiness=pickiness,
        content=content,
        stated=stated,
        quality=quality,
        prior=prior,
        age_days=age_days,
        activity=activity,
        capacity_scale=capacity_scale,
        ptr=ptr,
        pair_viewer=pv.astype(np.int64),
        pair_candidate=pc.astype(np.int64),
        p_like=_sigmoid(logit),
        reverse=reverse.astype(np.int64),
    )
