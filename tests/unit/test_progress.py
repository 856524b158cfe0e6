"""Progress of parallel builds: live lines on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import time

from ckms.lifecycle import Progress, Row, Summary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_line_per_running_build() -> None:
    term = Terminal()
    with Progress(term) as progress:
        progress.phase("foo=1.0 6.1.0-56-amd64", "start")
        progress.phase("bar=2 6.1.0-56-amd64", "build")
        time.sleep(0.7)  # one redraw
        progress.done("foo=1.0 6.1.0-56-amd64", "built")
    text = term.getvalue()
    assert "   bar=2 6.1.0-56-amd64: build [" in text  # the live line, with its elapsed time
    assert "\033[1A\033[2K" in text  # redrawn in place
    assert "=> foo=1.0 6.1.0-56-amd64: built (" in text


def test_a_pipe_gets_plain_lines_only() -> None:
    pipe = io.StringIO()
    with Progress(pipe) as progress:
        progress.phase("foo=1.0 K", "start")
        progress.phase("foo=1.0 K", "build")
        progress.done("foo=1.0 K", "FAILED")
    assert pipe.getvalue().splitlines() == ["=> foo=1.0 K: building", "=> foo=1.0 K: FAILED (0s)"]
    assert "\033" not in pipe.getvalue()


def test_summary_table_and_failure() -> None:
    summary = Summary([Row("zfs", "2.2.2", "6.1.0-56-amd64", "built and installed"),
                       Row("nvidia", "535", "6.1.0-56-amd64", "failed", "build failed")])
    lines = summary.table().splitlines()
    assert lines[0].split() == ["PACKAGE", "VERSION", "KERNEL", "RESULT"]
    assert lines[2].split(None, 3)[3] == "failed: build failed"
    assert summary.failed
    assert not Summary([Row("a", "1", "k", "up to date")]).failed
