"""The API's routes, one APIRouter per area: discovery (``/v1`` lists), events, ops."""

from .discovery import router as discovery
from .events import router as events
from .ops import router as ops

__all__ = ["discovery", "events", "ops"]
