"""One exclusive lock per state tree: writers wait with a message, then give up."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import RunCkms, ckms_env
from tests.unit.test_state_machine import KVER, fake_kernel, ini_with, only_error, write_pkg


@contextlib.contextmanager
def hold_lock(statedir: Path) -> Iterator[str]:
    """Hold the tree's lock from this process, as another ckms would."""
    fd = os.open(statedir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = f"pid {os.getpid()}"
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder}\n".encode())
        yield holder
    finally:
        os.close(fd)


def spawn(statedir: Path, *args: str) -> subprocess.Popen[str]:
    """ckms in the background, its output readable line by line."""
    return subprocess.Popen([sys.executable, "-m", "ckms", "-C", "/dev/null", "-s", str(statedir),
                             "-L", *args], env=ckms_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: List[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return line
    proc.kill()
    raise AssertionError(f"no {text!r} from ckms; got {seen!r}; stderr: {proc.communicate()[1]}")


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared: {proc.communicate()}")
        time.sleep(0.02)


@pytest.fixture
def short_timeout(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.ini"
    cfg.write_text("[ckms]\nlock_timeout = 1\n")
    return cfg


def test_second_writer_times_out(tmp_path: Path, ckms: RunCkms, statedir: Path,
                                 short_timeout: Path) -> None:
    src = write_pkg(tmp_path)
    with hold_lock(statedir) as holder:
        start = time.monotonic()
        proc = ckms("add", str(src), "-C", str(short_timeout), check=7)
        elapsed = time.monotonic() - start
    assert f"waiting for the lock on {statedir} (held by {holder})..." in proc.stdout
    msg = only_error(proc.stderr)
    assert msg.strip() == (f"ckms: error: gave up after 1s waiting for the lock on {statedir}, "
                           f"held by {holder}; retry when it has finished")
    assert 1 <= elapsed < 10
    assert not (statedir / "foo").exists()  # nothing changed
    ckms("add", str(src))  # and with the lock free it works


def test_status_does_not_block(tmp_path: Path, ckms: RunCkms, statedir: Path) -> None:
    ckms("add", str(write_pkg(tmp_path)))
    with hold_lock(statedir):
        start = time.monotonic()
        assert ckms("status", "-k", KVER).stdout.endswith(": added\n")
        assert ckms("plain-status", "--json", "foo=1.0").stdout.startswith("[")
        assert time.monotonic() - start < 5
        assert "waiting" not in ckms("status").stdout


def test_waiting_writer_goes_on_when_the_lock_is_free(tmp_path: Path, ckms: RunCkms,
                                                       statedir: Path) -> None:
    src = write_pkg(tmp_path)
    with hold_lock(statedir) as holder:
        proc = spawn(statedir, "add", str(src))
        line = wait_for_line(proc, "waiting for the lock")
        assert holder in line
        assert proc.poll() is None and not (statedir / "foo").exists()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "added foo=1.0" in out
    assert ckms("plain-status", "foo", "-k", KVER).stdout.split()[-1] == "added"


def test_a_running_build_holds_the_lock(tmp_path: Path, ckms: RunCkms, statedir: Path,
                                        short_timeout: Path) -> None:
    hdr = fake_kernel(tmp_path)
    started, go = tmp_path / "started", tmp_path / "go"
    hook = (f"touch {started}; while ! test -e {go}; do sleep 0.02; done; printf fake > foo.ko")
    ckms("add", str(write_pkg(tmp_path, ini_with(hook))))
    other = write_pkg(tmp_path, ini_with("true").replace("name = foo", "name = bar"), "other")
    build = spawn(statedir, "build", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr))
    try:
        wait_for_file(started, build)
        # a second writer, even on another package, waits and gives up
        proc = ckms("add", str(other), "-C", str(short_timeout), check=7)
        assert f"held by pid {build.pid}" in only_error(proc.stderr)
        assert "waiting for the lock" in proc.stdout
        # readers see the state before the build, without waiting
        assert ckms("plain-status", "foo", "-k", KVER).stdout.split()[-1] == "added"
    finally:
        go.touch()
    out, err = build.communicate(timeout=20)
    assert build.returncode == 0, err
    assert ckms("plain-status", "foo", "-k", KVER).stdout.split()[-1] == "built"
    assert not (statedir / "bar").exists()


@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_bad_lock_timeout(tmp_path: Path, ckms: RunCkms, value: str) -> None:
    cfg = tmp_path / "config.ini"
    cfg.write_text(f"[ckms]\n\nlock_timeout = {value}\n")
    msg = only_error(ckms("status", "-C", str(cfg), check=3).stderr)
    assert msg.startswith(f"ckms: error: {cfg}:3: '{value}'")
