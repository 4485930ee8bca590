"""An item's exposure cap: the one rule for which cap applies (the counters' flush, the
degraded fallback's own count)."""

from __future__ import annotations

from typing import Any

__all__ = ["item_cap"]


def item_cap(own: Any, default: int) -> int:
    """Pure: the item's own ``exposure_cap`` when it is a positive integer, else ``default``
    (``exposure_default_cap``)."""
    return own if isinstance(own, int) and own > 0 else default
