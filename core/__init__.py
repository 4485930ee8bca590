"""opendisco: search-engine-native discovery (MongoDB -> OpenSearch -> Python rerank)."""

from . import _clients as clients
from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _exc_all
from ._settings import Settings, get_settings, load_settings

__version__ = "0.1.0"
__all__ = [*_exc_all, "Settings", "clients", "get_settings", "load_settings", "__version__"]
