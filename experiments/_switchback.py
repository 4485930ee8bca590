"""The switchback design a market's measured carry-over calls for.

A switchback's period must outlast the carry-over and each period's first carry-over's worth
of time (the burn-in) is dropped, so that what is read was caused by the period's own arm
(Bojinov, Simchi-Levi & Zhao 2023: periods as long as the carry-over; the first ones after a
switch are not used). The carry-over is measured on the **pre-period** (never on an
experiment's outcome: :func:`~._simulate.carry_over_days`). Two cases leave no room for a
switch inside the run:

* the measured carry-over reaches the longest lag the pre-period can show (it is censored:
  the market remembers at least as long as it was observed, so no finite period is known to
  be long enough);
* two periods of carry-over + 1 days do not fit in the run.

Then one period covers the run and nothing is dropped: each region keeps one arm from the
start, exactly as the all-treated and all-control worlds do, and the switchback is a
region-randomised experiment (regions are independent markets). Its analysis treats the
regions as clusters (:mod:`._readout`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SwitchbackPlan", "switchback_plan"]

_DAY = 1440


@dataclass(frozen=True)
class SwitchbackPlan:
    """Pre-registered switchback timing (days) and why."""

    carry_over_days: int
    period_days: int
    burn_in_days: int
    censored: bool  # the carry-over reached the longest lag the pre-period can show

    def design(self) -> dict[str, int | str]:
        """The design fields of an experiment file (``design: {...}``)."""
        return {
            "kind": "switchback",
            "period_minutes": self.period_days * _DAY,
            "burn_in_minutes": self.burn_in_days * _DAY,
        }


def switchback_plan(carry_over_days: int, pre_days: int, run_days: int) -> SwitchbackPlan:
    """Period carry-over + 1 days with carry-over days of burn-in, unless the carry-over is
    censored by the ``pre_days`` pre-period or two such periods do not fit in ``run_days``:
    then one period of ``run_days`` and no burn-in (see the module docstring)."""
    if carry_over_days < 0 or pre_days < 1 or run_days < 1:
        raise ValueError("need carry_over_days >= 0, pre_days >= 1, run_days >= 1")
    censored = carry_over_days >= pre_days - 1
    if censored or 2 * (carry_over_days + 1) > run_days:
        return SwitchbackPlan(carry_over_days, run_days, 0, censored)
    return SwitchbackPlan(carry_over_days, carry_over_days + 1, carry_over_days, False)
