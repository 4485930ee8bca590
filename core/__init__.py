"""opendisco: search-engine-native discovery (MongoDB -> OpenSearch -> Python rerank).

The root package is the bottom layer: settings, the error tree and its one mapping of backend
errors, client factories, MongoDB/FerretDB helpers and the concepts every layer names
(surfaces, ids). Everything else imports it; it imports none of them.
"""

from . import _clients as clients
from ._backend import backend_errors
from ._domain import ID_PATTERN, USER_SURFACES, Id, Surface
from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _exc_all
from ._settings import Settings, load_settings
from ._store import StoreCapabilities, detect_capabilities, now_ms

__version__ = "0.1.0"
__all__ = [
    *_exc_all,
    "ID_PATTERN",
    "USER_SURFACES",
    "Id",
    "Settings",
    "StoreCapabilities",
    "Surface",
    "__version__",
    "backend_errors",
    "clients",
    "detect_capabilities",
    "load_settings",
    "now_ms",
]
