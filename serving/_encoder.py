"""The search surface's query encoder: the sentence-transformers model, loaded once per
process in the background from its start, while every other surface is served.

Loading it is most of a serving process's start-up — ``import sentence_transformers`` alone
takes ~10 s here (transformers, scikit-learn, torch), the model ~1 s more. When the API's
start-up waited for it, ``opendisco serve`` answered its first request 12–13 s after it
started (17–19 s with two workers on two cores), and that was the time a process restarted
after a crash, or a worker replaced under ``--workers``, refused connections or took none.
Now the load runs in a thread of its own (:func:`~opendisco._cancel.in_daemon_thread`)
started by :meth:`QueryEncoder.start`: the process answers after 3.1–3.4 s (5.5–5.8 s); a
search arriving meanwhile waits for the load within its deadline (past it, the API's
degraded answer, as for any slow request). A failed load is logged and tried again by the
next search. The API freezes the encoder's heap out of garbage collection once it has
landed (``api._gc``); its log says when (:data:`ENCODER_LOADED`: what a caller that wants a process
fully warm — a benchmark — waits for).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from opendisco import clients
from opendisco._cancel import in_daemon_thread
from opendisco._settings import Settings

if TYPE_CHECKING:  # torch: loaded by the encoder's load, not on import
    from sentence_transformers import SentenceTransformer

__all__ = ["ENCODER_LOADED", "QueryEncoder"]

#: the log line of a process whose encoder has loaded
ENCODER_LOADED = "query encoder loaded"
log = logging.getLogger("opendisco.serving")


class QueryEncoder:
    """Query text → unit vector, with the model loaded once, in the background."""

    def __init__(self, settings: Settings, model: SentenceTransformer | None = None) -> None:
        self.settings = settings
        #: the loaded model (None until its load has landed)
        self.model = model
        self._loading: asyncio.Future[SentenceTransformer] | None = None

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def start(self) -> asyncio.Future[SentenceTransformer]:
        """The model's load: started on the first call (again after a failed one), in a
        thread of its own; done at once when the model is loaded."""
        if self.model is not None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(self.model)
            return done
        if self._loading is None or (self._loading.done() and self.model is None):
            self._loading = asyncio.ensure_future(self._load())
            # a failure nobody awaits is logged by _load, not as "never retrieved"
            self._loading.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._loading

    async def _load(self) -> SentenceTransformer:
        t0 = time.perf_counter()
        try:
            model = await in_daemon_thread(clients.load_model, self.settings)
        except Exception:
            log.exception("query encoder not loaded (the next search tries again)")
            raise
        self.model = model
        log.warning("%s in %.1f s", ENCODER_LOADED, time.perf_counter() - t0)
        return model

    async def encode(self, text: str) -> list[float]:
        """``text``'s normalised embedding; waits for the model's load (a caller cancelled
        meanwhile leaves it running for the next)."""
        model = self.model if self.model is not None else await asyncio.shield(self.start())
        vec = await asyncio.to_thread(
            model.encode, [text], normalize_embeddings=True, show_progress_bar=False
        )
        return [float(x) for x in vec[0]]
