"""The job server: one budget of slots shared by every build of a command."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from ckms.jobs import JobServer


def test_slots_bound_concurrency_even_when_make_made_the_pipe_non_blocking() -> None:
    with JobServer(2) as server:
        os.set_blocking(server.fds[0], False)  # what GNU make 4.3 does to the shared pipe
        held, most = [], [0]
        lock = threading.Lock()

        def build() -> None:
            with server.slot():
                with lock:
                    held.append(1)
                    most[0] = max(most[0], len(held))
                time.sleep(0.05)
                with lock:
                    held.pop()

        threads = [threading.Thread(target=build) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most[0] == 2


def test_make_runs_its_jobs_through_the_server(tmp_path: Path) -> None:
    """Real GNU make as a client: two slots run two recipes at once."""
    (tmp_path / "Makefile").write_text(
        "all: a b\na b:\n\t@echo start $@ >> log; sleep 0.3; echo end $@ >> log\n")
    with JobServer(2) as server:
        env = {**os.environ, **server.env()}
        subprocess.run(["make", "-s", "-C", str(tmp_path)], env=env, pass_fds=server.fds, check=True)
    lines = (tmp_path / "log").read_text().split()
    assert lines[:4] == ["start", lines[1], "start", lines[3]]  # both started before either ended
