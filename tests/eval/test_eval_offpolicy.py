"""Off-policy estimators: a hand-computed case, and unbiasedness and 95% coverage over
repeated seeds of a world whose true value is known (pure, no servers); the CLI on an empty
log (real FerretDB)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from click.testing import CliRunner
from served_lists import served_list

from opendisco import InvalidInput, Settings, clients
from opendisco.cli.main import cli
from opendisco.eval._offpolicy import SlateLogs, estimate, slate_logs
from opendisco.rerank import pl_marginals, pl_sample, pl_weights
from opendisco.signals import EVENTS, ServedLog
from opendisco.signals._served_list import decode_list, encode_list


def _const(q: float):  # a (misspecified) reward model for DR
    return lambda logs, logged, target: (
        np.full(logged.shape, q),
        np.full(target.shape, q),
    )


def test_hand_computed_values() -> None:
    X = np.array([[1.0], [0.0]])
    m = np.array([[0.5], [0.5]])  # uniform pool of two, one slot
    logs = SlateLogs([X, X], np.array([[0], [1]]), np.array([[1.0], [0.0]]), [m, m])
    res = estimate(logs, lambda X: X[:, 0], reward_model=_const(0.5))
    assert res.estimates["ips"]["value"] == pytest.approx(1.0)  # (2 * 1 + 0) / 2
    assert res.estimates["snips"]["value"] == pytest.approx(1.0)  # 2 / 2
    assert res.estimates["dr"]["value"] == pytest.approx(1.0)  # (0.5 + 2 * 0.5 + 0.5) / 2
    assert res.estimates["ips"]["se"] == pytest.approx(np.std([2.0, 0.0], ddof=1) / np.sqrt(2))
    assert res.logged_value == 0.5 and res.unsupported == 0.0


def test_marginals_of_the_plackett_luce_sampler() -> None:
    w = pl_weights(4, 1.0)
    m = pl_marginals(w, 2, samples=20000, rng=np.random.default_rng(1))
    assert m[:, 0] == pytest.approx(w / w.sum())
    assert m.sum(axis=0) == pytest.approx([1.0, 1.0])
    # slot 1 of row 0: sum over first picks r != 0 of P(r) * w0 / (W - w_r)
    exact = sum(w[r] / w.sum() * w[0] / (w.sum() - w[r]) for r in range(1, 4))
    assert m[0, 1] == pytest.approx(exact, abs=0.01)
    picks, prop = pl_sample(w, 3, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 3 and prop[0] == pytest.approx(w[picks[0]] / w.sum())


def _world(n: int, seed: int, pool: int = 6, k: int = 3):
    """Lists of ``pool`` rows; reward ~ Bernoulli(theta_slot * p_row); logging = PL over the
    pool in logged order; target = rank by a noisy view of p (its true value is known)."""
    rng = np.random.default_rng(seed)
    theta = np.array([1.0, 0.7, 0.5])[:k]
    w = pl_weights(pool, 1.0)
    marg = pl_marginals(w, k, samples=20000, rng=np.random.default_rng(123))
    X, shown, reward, margs, truth = [], [], [], [], 0.0
    for _ in range(n):
        p = rng.uniform(0.05, 0.6, size=pool)
        feat = np.column_stack([p + rng.normal(0, 0.1, size=pool), rng.random(pool)])
        picks, _ = pl_sample(w, k, rng)
        shown.append(picks)
        reward.append(rng.random(k) < theta * p[picks])
        X.append(feat)
        margs.append(marg)
        truth += float(theta @ p[np.argsort(-feat[:, 0], kind="stable")[:k]])
    logs = SlateLogs(X, np.asarray(shown), np.asarray(reward, dtype=float), margs)
    return logs, truth / n


def test_estimates_are_unbiased_and_cover_the_true_value() -> None:
    covered = {"ips": 0, "snips": 0, "dr": 0}
    errors = {"ips": [], "snips": [], "dr": []}
    seeds = 60
    for seed in range(seeds):
        logs, truth = _world(600, seed)
        res = estimate(logs, lambda X: X[:, 0], reward_model=_const(0.2))
        for name, e in res.estimates.items():
            covered[name] += e["ci_low"] <= truth <= e["ci_high"]
            errors[name].append((e["value"] - truth) / e["se"])
    for name in covered:
        z = np.asarray(errors[name])
        assert abs(z.mean()) < 0.5, (name, z.mean())  # no bias beyond noise
        assert 0.85 <= covered[name] / seeds <= 1.0, (name, covered[name])


def test_no_explored_list_is_an_empty_log() -> None:
    """No list explored (an empty or fresh log, explore_rate 0): no slate, not a ValueError
    from reshaping nothing into k=0 columns (`opendisco eval offpolicy` then says so)."""
    unexplored = {"_id": "r1", "user_id": "u1", "ids": ["a"], "X": np.zeros((1, 1)), "shown": [0]}
    for lists in ([], [unexplored]):
        logs = slate_logs(lists, [])
        assert len(logs) == 0 and logs.shown.shape == (0, 0)


def test_offpolicy_on_an_empty_log_is_a_usage_error(settings: Settings) -> None:
    """The CLI on a namespace nothing was served in (real FerretDB, an empty database): the
    usage error naming the cause, not a traceback."""
    empty = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}opnone"})
    run = CliRunner().invoke(cli, ["eval", "offpolicy", "linear"], obj=empty)
    assert run.exit_code == 2, run.output
    assert "no explored list among 0 logged lists" in run.output


def test_one_explored_list_is_a_usage_error_not_nan_intervals(settings: Settings) -> None:
    """One explored list has no standard error: before, ``estimate`` answered NaN standard
    errors and intervals, and ``eval offpolicy --json`` printed ``NaN`` (not JSON). The CLI on
    a log of one explored list and its like (real FerretDB) says why, exit code 2."""
    X = np.array([[1.0], [0.0]])
    one = SlateLogs([X], np.array([[0]]), np.array([[1.0]]), [np.full((2, 1), 0.5)])
    with pytest.raises(InvalidInput, match="1 explored list"):
        estimate(one, lambda X: X[:, 0], reward_model=_const(0.5))
    ns = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}opone"})
    at = datetime.now(UTC) - timedelta(hours=1)

    async def log_one() -> None:
        mongo = clients.mongo_async(ns)
        db = mongo[ns.mongo_db]
        log = ServedLog(db)
        one = replace(served_list("r1", degraded=False), at=at, k=2, shown=[1, 0])
        log.log(replace(one, propensity=[0.5, 0.5], explored=True, pool=[0, 1, 2], pool_w=[1] * 3))
        await log.drain()
        like = {"type": "like", "user_id": "u1", "item_id": "b", "ts": at + timedelta(minutes=1)}
        await db[EVENTS].insert_one(like)
        await mongo.close()

    asyncio.run(log_one())
    run = CliRunner().invoke(cli, ["eval", "offpolicy", "linear", "--json"], obj=ns)
    assert run.exit_code == 2, run.output
    assert "1 explored list(s) with outcomes: at least 2" in run.output
    assert "NaN" not in run.output


def test_rewards_of_a_filled_explored_page_stay_on_their_rows() -> None:
    """An explored page a failed source left short is filled (``filled`` rows, in the pool
    the page was drawn from): the rewards are read per logged row. Before, the labels came
    from the training join, which leaves the filled rows out, so every row after a filled one
    got its neighbour's outcome (a like on row 2 credited to row 1) and a shown last row was
    an IndexError."""
    rng = np.random.default_rng(0)
    at = datetime(2026, 1, 10, tzinfo=UTC)
    explored = replace(
        served_list("r1"),
        at=at,
        k=2,
        shown=[2, 0],
        propensity=[0.5, 0.5],
        explored=True,
        pool=[0, 1, 2],
        pool_w=[1.0] * 3,
        filled=[1],
    )
    doc = decode_list(encode_list(explored, 200, rng))
    like = {"type": "like", "user_id": "u1", "item_id": "c", "ts": at + timedelta(minutes=1)}
    logs = slate_logs([doc], [like])
    assert logs.shown.tolist() == [[2, 0]]
    assert logs.reward.tolist() == [[1.0, 0.0]]  # "c" (row 2) liked, shown first
    last = replace(explored, request_id="r2", shown=[0, 2])
    logs = slate_logs([doc, decode_list(encode_list(last, 200, rng))], [like])
    assert logs.reward.tolist() == [[1.0, 0.0], [0.0, 1.0]]
