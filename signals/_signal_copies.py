"""The per-candidate signals a process keeps copies of (``signals._copies``): exposure
counters, inbound attention, member tastes — built from the settings, refreshed together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from opendisco._settings import Settings

from ._exposure import ExposureStore
from ._exposure_mirror import ExposureMirror
from ._inbound import InboundCopy
from ._served import ServedExposure
from ._taste_copy import TasteCopy

__all__ = ["SignalCopies"]


@dataclass(frozen=True)
class SignalCopies:
    exposure: ExposureMirror
    inbound: InboundCopy
    tastes: TasteCopy

    @classmethod
    def from_settings(
        cls,
        exposure: ExposureStore,
        db: Any,
        settings: Settings,
        served: ServedExposure | None = None,
    ) -> SignalCopies:
        """The copies ``settings`` ask for; ``served``: this process's served impressions
        (the exposure copy's :meth:`~ExposureMirror.known`)."""
        every, most = settings.signal_copies_s, settings.signal_copies_max_items
        return cls(
            exposure=ExposureMirror(exposure, every_s=every, max_items=most, served=served),
            inbound=InboundCopy(db, every_s=every, max_items=most),
            tastes=TasteCopy(db, every_s=every, max_items=settings.taste_copy_max_members),
        )

    async def run(self) -> None:
        """Keep all three (a background task of each API process)."""
        await asyncio.gather(self.exposure.run(), self.inbound.run(), self.tastes.run())
