"""Two checkouts installing FerretDB at once (its build directory is shared in the cache):
one builds, the other waits for it and uses its binary. Both built into the same source tree
and temporary binary name, and one failed on the other's files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from opendisco import Settings
from opendisco.services._ferretdb import FerretDBService


def test_concurrent_installs_build_once(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"cache_dir": tmp_path / "cache", "state_dir": tmp_path})
    builds: list[int] = []

    def installer() -> FerretDBService:
        svc = FerretDBService(s, echo=lambda *_: None)

        def build() -> None:  # the go build, ~1 min: a binary appears at its end
            builds.append(threading.get_ident())
            time.sleep(0.3)
            svc.binary.parent.mkdir(parents=True, exist_ok=True)
            svc.binary.write_text("#!/bin/sh\n")

        svc._build = build  # type: ignore[method-assign]
        return svc

    a, b = installer(), installer()
    threads = [threading.Thread(target=svc.install) for svc in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(builds) == 1 and a.binary.is_file()
    a.install()  # installed: nothing to do
    assert len(builds) == 1
