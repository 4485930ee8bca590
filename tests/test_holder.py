"""Holders of leases and claims: this process is alive, a killed one is gone (reaped or not),
a reused pid is not the old holder, and nothing is known of another host's processes."""

from __future__ import annotations

import os
import signal
import subprocess

from opendisco._holder import holder, holder_gone


def test_this_process_is_not_gone() -> None:
    me = holder()
    assert me["pid"] == os.getpid() and isinstance(me["started"], int)
    assert not holder_gone(me["host"], me["pid"], me["started"])
    assert not holder_gone(me["host"], me["pid"])


def test_a_killed_process_is_gone_before_and_after_it_is_reaped() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    me = holder()
    try:
        assert not holder_gone(me["host"], proc.pid)
        proc.send_signal(signal.SIGKILL)
        for _ in range(200):  # a zombie once the kernel has killed it
            if holder_gone(me["host"], proc.pid):
                break
            subprocess.run(["true"])
        assert holder_gone(me["host"], proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert holder_gone(me["host"], proc.pid)


def test_a_reused_pid_or_another_host_is_not_the_holder() -> None:
    me = holder()
    assert holder_gone(me["host"], me["pid"], me["started"] - 1)  # another process's start
    assert not holder_gone("elsewhere|pid:[1]", 999_999_999)  # nothing known: not gone
    assert not holder_gone(me["host"], "12")
    assert not holder_gone(None, None)
