"""Every exit status documented in `ckms --help` is produced, with one clear message."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from ckms import errors
from ckms.cli import EPILOG
from tests.conftest import SRC, RunCkms, ckms_env
from tests.unit.test_lock import hold_lock
from tests.unit.test_state_machine import KVER, fake_kernel, ini_with, only_error, write_pkg

NOBODY = 65534


def documented_codes() -> Dict[int, str]:
    text = " ".join(EPILOG.split("Exit status:", 1)[1].split("See ", 1)[0].split())
    return {int(code): what.strip() for code, what in re.findall(r"(\d+) ([^,.]+)", text)}


def test_documented_codes_match_the_error_classes() -> None:
    documented = documented_codes()
    assert documented[0] == "success"
    classes = {cls.code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.CkmsError)}
    assert set(documented) == classes | {0}
    assert sorted(documented) == list(range(10))


def test_help_documents_the_codes() -> None:
    proc = subprocess.run([sys.executable, "-m", "ckms", "--help"], env=ckms_env(),
                          capture_output=True, text=True, check=True)
    assert "Exit status: 0 success" in proc.stdout
    assert "8 build failed" in proc.stdout


# ----- one scenario per code -----------------------------------------------------------------

Scenario = Callable[[Path, RunCkms, Path], Tuple["subprocess.CompletedProcess[str]", List[str]]]


def added(tmp: Path, ckms: RunCkms, ini: str) -> Path:
    hdr = fake_kernel(tmp)
    ckms("add", str(write_pkg(tmp, ini)))
    return hdr


def success(tmp: Path, ckms: RunCkms, statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    return ckms("status"), []


def operation_failed(tmp: Path, ckms: RunCkms,
                     statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    hdr = added(tmp, ckms, ini_with("printf fake > foo.ko", "pre_install = exit 9\n"))
    ckms("build", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr))
    proc = ckms("install", "foo=1.0", "-k", KVER, "-d", str(tmp / "dest"), check=None)
    return proc, ["pre_install hook of foo=1.0 failed on " + KVER, "exit status 9"]


def usage_error(tmp: Path, ckms: RunCkms,
                statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    return ckms("build", "foo/1.0", check=None), ["bad package 'foo/1.0'", "NAME=VERSION"]


def config_error(tmp: Path, ckms: RunCkms,
                 statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    src = write_pkg(tmp, "[general]\nname = foo\nversion = 1.0\nstrip = perhaps\n")
    return ckms("add", str(src), check=None), [f"{src}/ckms.ini:4: invalid boolean 'perhaps'"]


def state_error(tmp: Path, ckms: RunCkms,
                statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    return ckms("build", "foo=1.0", "-k", KVER, check=None), ["foo=1.0 is not added", "ckms add"]


def kernel_error(tmp: Path, ckms: RunCkms,
                 statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    added(tmp, ckms, ini_with("printf fake > foo.ko"))
    missing = tmp / "no-headers"
    proc = ckms("build", "foo=1.0", "-k", KVER, "--hdrdir", str(missing), check=None)
    hint = (f"linux-headers-{KVER}" if Path("/etc/debian_version").exists()
            else f"kernel headers for {KVER}")
    return proc, [f"no kernel headers for {KVER} in {missing}", hint]


def lock_timeout(tmp: Path, ckms: RunCkms,
                 statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    cfg = tmp / "config.ini"
    cfg.write_text("[ckms]\nlock_timeout = 0.3\n")
    with hold_lock(statedir) as holder:
        proc = ckms("add", str(write_pkg(tmp)), "-C", str(cfg), check=None)
    return proc, ["gave up after 0.3s waiting for the lock", holder]


def build_failed(tmp: Path, ckms: RunCkms,
                 statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    hdr = added(tmp, ckms, ini_with("echo the compiler said no; exit 1"))
    proc = ckms("build", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr), check=None)
    return proc, ["build of foo=1.0 for " + KVER + " failed", "the compiler said no", ".failed-"]


def skipped(tmp: Path, ckms: RunCkms,
            statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    hdr = added(tmp, ckms, ini_with("printf fake > foo.ko"))
    marker = tmp / "modules" / KVER / "ckms-disable" / "foo" / "1.0"
    marker.mkdir(parents=True)
    return (ckms("build", "foo=1.0", "-k", KVER, "--hdrdir", str(hdr), "-d", str(tmp / "modules"),
                 check=None),
            ["foo=1.0 is disabled for " + KVER, str(marker)])


@contextlib.contextmanager
def world_readable_statedir() -> Iterator[Path]:
    """A state dir another user can reach (pytest's tmp dirs are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="ckms-errors-"))
    try:
        os.chmod(base, 0o755)
        (base / "state").mkdir(mode=0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(uid: int) -> Dict[str, object]:
    return {} if os.geteuid() != 0 else {"user": uid, "group": uid, "extra_groups": [], "cwd": "/"}


def python_for(uid: int) -> str:
    """An interpreter the user can run (root's pyenv is out of nobody's reach)."""
    for py in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([py, "-c", "import sys; assert sys.version_info >= (3, 9)"],
                                capture_output=True, **as_user(uid))  # type: ignore[call-overload]
        except OSError:  # not even executable for the user
            continue
        if ok.returncode == 0:
            return py
    pytest.skip("no Python interpreter the unprivileged user can run")


def needs_root(tmp: Path, ckms: RunCkms,
               statedir: Path) -> Tuple[subprocess.CompletedProcess[str], List[str]]:
    """install into the real module dir as a normal user: nothing is touched."""
    with world_readable_statedir() as base:
        state = base / "state"
        hdr = fake_kernel(base)
        common = ["-C", "/dev/null", "-s", str(state), "-L", "-k", KVER, "--hdrdir", str(hdr)]
        for cmd in (["add", str(write_pkg(base))], ["build", "foo=1.0"]):
            subprocess.run([sys.executable, "-m", "ckms", *common, *cmd], env=ckms_env(),
                           check=True, capture_output=True)
        env = ckms_env()
        env["PYTHONPATH"] = str(SRC)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        proc = subprocess.run([python_for(NOBODY), "-m", "ckms", *common, "install", "foo=1.0"],
                              env=env, capture_output=True, text=True,
                              **as_user(NOBODY))  # type: ignore[call-overload]
        assert not (state / "foo" / f"kernel-{KVER}-{os.uname().machine}").exists()
    return proc, ["installing into /lib/modules needs root", "-d DESTDIR"]


SCENARIOS: Dict[int, Scenario] = {
    0: success,
    1: operation_failed,
    2: usage_error,
    3: config_error,
    4: state_error,
    5: kernel_error,
    6: needs_root,
    7: lock_timeout,
    8: build_failed,
    9: skipped,
}


def test_every_documented_code_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(documented_codes())


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_exit_code(code: int, tmp_path: Path, ckms: RunCkms, statedir: Path) -> None:
    proc, words = SCENARIOS[code](tmp_path, ckms, statedir)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    if code == 0:
        assert proc.stderr == ""
        return
    msg = only_error(proc.stderr)
    for word in words:
        assert word in msg, msg


def test_missing_config_file_given_with_C(tmp_path: Path, ckms: RunCkms) -> None:
    missing = tmp_path / "nope.ini"
    msg = only_error(ckms("status", "-C", str(missing), check=3).stderr)
    assert f"{missing}: file not found" in msg


def test_config_warnings_name_file_and_line(tmp_path: Path, ckms: RunCkms) -> None:
    cfg = tmp_path / "config.ini"
    cfg.write_text("[ckms]\nlock_timout = 5\n[other]\n")
    proc = ckms("status", "-C", str(cfg))
    assert f"ckms: warning: {cfg}:2: unknown key 'lock_timout' in [ckms] ignored" in proc.stderr
    assert f"ckms: warning: {cfg}:3: unknown section [other] ignored" in proc.stderr


def test_kernel_error_leaves_no_failed_state(tmp_path: Path, ckms: RunCkms, statedir: Path) -> None:
    kernel_error(tmp_path, ckms, statedir)
    assert ckms("plain-status", "foo", "-k", KVER).stdout.split()[-1] == "added"
    assert sorted(p.name for p in (statedir / "foo" / "1.0").iterdir()) == ["ckms.ini", "source"]
