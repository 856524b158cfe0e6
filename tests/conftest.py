"""Shared fixtures: run the real ckms command, find the real kernels."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SRC = ROOT / "src"
OWNER = "ckms-test"  # the unprivileged owner of state trees in root tests

RunCkms = Callable[..., "subprocess.CompletedProcess[str]"]


def ckms_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NO_COLOR", None)
    return env


def run_ckms_cmd(args: List[str], check: Optional[int] = 0,
                 input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m ckms ARGS`; check the exit status unless check is None."""
    proc = subprocess.run([sys.executable, "-m", "ckms", "-C", "/dev/null", *args],
                          env=ckms_env(), capture_output=True, text=True, input=input,
                          timeout=900)
    if check is not None and proc.returncode != check:
        raise AssertionError(f"ckms {' '.join(args)} exited {proc.returncode}, wanted {check}\n"
                             f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def real_kernels() -> List[str]:
    """Kernel versions with Debian headers installed, oldest first."""
    base = Path("/lib/modules")
    if not base.is_dir():
        return []
    return sorted(k.name for k in base.iterdir() if (k / "build" / "Makefile").is_file())


@pytest.fixture
def statedir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def ckms(statedir: Path) -> RunCkms:
    """ckms bound to a fresh state dir: ckms('build', 'foo=1', '-k', K, check=0)."""
    def run(*args: str, check: Optional[int] = 0) -> subprocess.CompletedProcess[str]:
        return run_ckms_cmd(["-s", str(statedir), "-L", *args], check=check)
    return run


def recording_hook(path: Path, log: Path, then: str = "") -> Path:
    """An executable hook that appends its first argument to log, then runs then."""
    path.write_text(f'#!/bin/sh\necho "$1" >> {log}\n{then}')
    path.chmod(0o755)
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_kernels = pytest.mark.skipif(len(real_kernels()) < 1, reason="no kernel headers installed")


# ----- as root: state trees owned by an unprivileged user ----------------------
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-traversable scratch dir (pytest's tmp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="ckms-it-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def owner() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OWNER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        OWNER], check=True)
        return pwd.getpwnam(OWNER)


def owned_tree(base: Path, user: pwd.struct_passwd) -> tuple[Path, Path]:
    """A state dir owned by user, and a copy of the examples it can read."""
    state = base / "state"
    state.mkdir()
    os.chown(state, user.pw_uid, user.pw_gid)
    src = base / "src"
    shutil.copytree(EXAMPLES, src)
    for dirpath, _dirs, _files in os.walk(src):
        os.chmod(dirpath, 0o755)
    return state, src
