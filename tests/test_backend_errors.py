"""The one mapping of backend library errors: the opendisco error type, and a text an operator
can act on."""

from __future__ import annotations

import pytest
from opensearchpy.exceptions import ConnectionError as SearchConnectionError
from opensearchpy.exceptions import ConnectionTimeout
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ServerSelectionTimeoutError,
    _OperationCancelled,
)

from opendisco import SearchBackendError, SearchTimeout, StoreBackendError, StoreUnreachable
from opendisco._backend import backend_errors


@pytest.mark.parametrize(
    ("raised", "kind"),
    [
        (ConnectionTimeout("TIMEOUT", "read timed out", None), SearchTimeout),
        (SearchConnectionError("N/A", "refused", None), SearchBackendError),
        (AutoReconnect("127.0.0.1:27017: connection refused"), StoreBackendError),
        (DuplicateKeyError("E11000"), StoreBackendError),
        # no server selected: the operation was never sent (not fenced: _store_fence)
        (ServerSelectionTimeoutError("127.0.0.1:27017: connection refused"), StoreUnreachable),
    ],
)
def test_library_errors_become_the_project_errors(raised: Exception, kind: type) -> None:
    with pytest.raises(kind) as caught, backend_errors("reading x failed"):
        raise raised
    assert str(caught.value).startswith("reading x failed: ")
    assert caught.value.__cause__ is raised


def test_a_cancelled_store_operation_says_why() -> None:
    """pymongo cancels the operations in flight when its monitor gives a server up (paused,
    partitioned): its text alone, "operation cancelled", read as if someone had cancelled the
    reindex."""
    with pytest.raises(StoreBackendError) as caught, backend_errors("saving sync state failed"):
        raise _OperationCancelled("operation cancelled")
    assert "the store stopped answering" in str(caught.value)
