"""The API's routes, one APIRouter per area: discovery (``/v1`` lists), events, ops, and the
relevance playground (``/playground``)."""

from .discovery import router as discovery
from .events import router as events
from .ops import router as ops
from .playground import router as playground

__all__ = ["discovery", "events", "ops", "playground"]
