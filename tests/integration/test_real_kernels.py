"""Real kbuild builds against installed Debian kernel headers.

Every test here builds real modules with the kernel's own build system and
checks the result with the real kmod tools (modinfo, depmod, modprobe).
"""

from __future__ import annotations

import os
import pwd
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from ckms.kernel import Kernel
from ckms.run import recompressed
from tests.conftest import (
    EXAMPLES,
    OWNER,
    ROOT,
    RunCkms,
    ckms_env,
    needs_root,
    owned_tree,
    real_kernels,
    recording_hook,
    run_ckms_cmd,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(len(real_kernels()) < 2, reason="needs two kernels with headers")]

KERNELS = real_kernels()
NEWEST = KERNELS[-1] if KERNELS else ""


def suffix(kver: str) -> str:
    return Kernel.find(kver).compression()


def modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.parametrize("kver", KERNELS)
def test_build_and_install_into_destdir(ckms: RunCkms, tmp_path: Path, statedir: Path,
                                        kver: str) -> None:
    dest = tmp_path / "dest"
    ckms("add", str(EXAMPLES / "pair"))
    ckms("-k", kver, "-q", "build", "ckms-pair=2.1")
    out = ckms("-k", kver, "-d", str(dest), "install", "ckms-pair=2.1").stdout
    assert "depmod" not in out
    sfx = suffix(kver)
    for mod in ("pair_core", "pair_user"):
        path = dest / kver / "extra" / "pair" / f"{mod}.ko{sfx}"
        assert path.is_file(), sorted(dest.rglob("*"))
        assert modinfo(path, "vermagic").split()[0] == kver
    assert modinfo(dest / kver / "extra/pair" / f"pair_user.ko{sfx}", "depends") == "pair_core"
    assert not (dest / kver / "modules.dep").exists()  # no depmod for a destdir
    status = ckms("status", "ckms-pair", "-k", kver).stdout.strip()
    assert status == f"ckms-pair, 2.1, {kver}, {os.uname().machine}: installed"
    # the hooks ran in order with their own logs kept with the build
    logs = statedir / "ckms-pair/2.1" / kver / os.uname().machine / "log"
    assert f"building ckms-pair 2.1 for {kver}" in (logs / "pre_build.log").read_text()
    assert "pair_user.ko" in (logs / "build.log").read_text()
    ckms("-k", kver, "-d", str(dest), "uninstall", "ckms-pair")
    assert not list((dest / kver).rglob("*.ko*"))
    ckms("-k", kver, "clean", "ckms-pair=2.1")
    ckms("remove", "ckms-pair=2.1")
    assert not list(statedir.iterdir()) or [p.name for p in statedir.iterdir()] == [".lock"]


def test_destdir_original_module_kept_and_restored(ckms: RunCkms, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    kdir = dest / NEWEST / "extra"
    kdir.mkdir(parents=True)
    original = kdir / f"ckms_hello.ko{suffix(NEWEST)}"
    original.write_bytes(b"the original module")
    ckms("add", str(EXAMPLES / "hello"))
    ckms("-k", NEWEST, "-q", "build", "ckms-hello=1.0")
    out = ckms("-k", NEWEST, "-d", str(dest), "install", "ckms-hello=1.0").stdout
    assert "kept the original" in out
    assert modinfo(original, "vermagic").split()[0] == NEWEST
    ckms("-k", NEWEST, "-d", str(dest), "uninstall", "ckms-hello=1.0")
    assert original.read_bytes() == b"the original module"


def test_failing_build_keeps_logs_and_no_built_state(ckms: RunCkms, tmp_path: Path,
                                                     statedir: Path) -> None:
    src = tmp_path / "broken-1.0"
    shutil.copytree(EXAMPLES / "hello", src)
    (src / "ckms.ini").write_text((src / "ckms.ini").read_text().replace("ckms-hello", "broken"))
    (src / "hello.c").write_text((src / "hello.c").read_text() + "\nthis is not C;\n")
    ckms("add", str(src))
    proc = ckms("-k", NEWEST, "-q", "build", "broken=1.0", check=8)
    assert "build of broken=1.0" in proc.stderr or "build" in proc.stderr
    assert ".failed-" in proc.stderr
    line = ckms("status", "broken", "-k", NEWEST).stdout
    assert ": failed (log: " in line
    log = Path(line.split("(log: ")[1].rstrip(")\n")) / "build.log"
    assert "error" in log.read_text()
    assert not (statedir / "broken/1.0" / NEWEST).exists()
    # a fixed source builds from a fresh copy, and the failure is forgotten
    (src / "hello.c").write_text((EXAMPLES / "hello/hello.c").read_text())
    ckms("-k", NEWEST, "-q", "build", "broken=1.0")
    assert ckms("status", "broken", "-k", NEWEST).stdout.strip().endswith(": built")


def test_missing_headers_names_the_package(ckms: RunCkms) -> None:
    ckms("add", str(EXAMPLES / "hello"))
    proc = ckms("-k", "0.0.1-nonexistent", "build", "ckms-hello=1.0", check=5)
    assert "linux-headers-0.0.1-nonexistent" in proc.stderr
    assert "/lib/modules/0.0.1-nonexistent/build" in proc.stderr


def _module_signature(path: Path) -> tuple[bytes, bytes]:
    """Split a signed module into (signed content, PKCS#7 DER signature)."""
    data = path.read_bytes()
    magic = b"~Module signature appended~\n"
    assert data.endswith(magic), "module is not signed"
    info = data[: -len(magic)]
    sig_len = struct.unpack(">I", info[-4:])[0]
    body = info[:-12]
    return body[:-sig_len], body[-sig_len:]


def test_signed_module_verifies_against_its_certificate(ckms: RunCkms, tmp_path: Path,
                                                       statedir: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "2", "-subj", "/CN=ckms test signing key/", "-outform", "PEM",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ckms("add", str(EXAMPLES / "hello"))
    ckms("-k", NEWEST, "-q", "build", "ckms-hello=1.0", "--sign", str(key), "--sign-cert", str(cert))
    # kept compressed as the kernel stores its modules, signed before compression
    moddir = statedir / "ckms-hello/1.0" / NEWEST / os.uname().machine / "module"
    stored = moddir / f"ckms_hello.ko{suffix(NEWEST)}"
    assert modinfo(stored, "signer") == "ckms test signing key"
    assert modinfo(stored, "sig_hashalgo") == Kernel.find(NEWEST).sig_hash
    ko = tmp_path / "ckms_hello.ko"
    ko.write_bytes(recompressed(stored, ""))
    content, sig = _module_signature(ko)
    (tmp_path / "content").write_bytes(content)
    (tmp_path / "sig.der").write_bytes(sig)

    def verify(content_file: Path) -> int:
        return subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
             "-content", str(content_file), "-certfile", str(cert), "-nointern", "-noverify",
             "-out", "/dev/null"], capture_output=True).returncode

    assert verify(tmp_path / "content") == 0
    tampered = bytearray(content)
    tampered[len(tampered) // 2] ^= 0xFF
    (tmp_path / "tampered").write_bytes(bytes(tampered))
    assert verify(tmp_path / "tampered") != 0


# ----- as root: the real module dir, privilege drop, a killed install ----------

@needs_root
def test_build_as_root_drops_to_the_state_owner(shared_dir: Path, owner: pwd.struct_passwd) -> None:
    state, src = owned_tree(shared_dir, owner)
    ini = src / "hello" / "ckms.ini"
    ini.write_text(ini.read_text().replace("[module.", "[hooks]\npre_build = id; umask\n\n[module.", 1))
    run_ckms_cmd(["-s", str(state), "add", str(src / "hello")])
    run_ckms_cmd(["-s", str(state), "-k", NEWEST, "-q", "build", "ckms-hello=1.0"])
    built = state / "ckms-hello/1.0" / NEWEST / os.uname().machine
    for path in [built, *built.rglob("*")]:
        assert path.lstat().st_uid == owner.pw_uid, path
    log = (built / "log/pre_build.log").read_text()
    assert f"uid={owner.pw_uid}({OWNER}) gid={owner.pw_gid}" in log
    groups = log.split("groups=")[1].split()[0]
    assert groups == f"{owner.pw_gid}({pwd.getpwuid(owner.pw_uid).pw_name})" or \
        groups.startswith(f"{owner.pw_gid}(") and "," not in groups
    assert "0022" in log


@needs_root
def test_install_into_the_real_module_dir_runs_depmod(shared_dir: Path,
                                                     owner: pwd.struct_passwd) -> None:
    state, src = owned_tree(shared_dir, owner)
    kver = NEWEST
    sfx = suffix(kver)
    target = Path("/lib/modules") / kver / "extra/pair"
    base = ["-s", str(state), "-k", kver, "-q"]
    run_ckms_cmd([*base, "add", str(src / "pair")])
    run_ckms_cmd([*base, "build", "ckms-pair=2.1"])
    try:
        out = run_ckms_cmd([*base, "install", "ckms-pair=2.1"]).stdout
        assert "depmod -a" in out and out.count("running depmod") == 1
        assert (target / f"pair_user.ko{sfx}").is_file()
        deps = subprocess.run(["modprobe", "-S", kver, "--show-depends", "pair_user"],
                              capture_output=True, text=True, check=True).stdout
        assert f"pair_core.ko{sfx}" in deps and f"pair_user.ko{sfx}" in deps
        assert modinfo(target / f"pair_user.ko{sfx}", "vermagic").split()[0] == kver
        # the state tree stays the owner's even after a root install
        link = state / "ckms-pair" / f"kernel-{kver}-{os.uname().machine}"
        assert link.lstat().st_uid == owner.pw_uid
    finally:
        run_ckms_cmd([*base, "uninstall", "ckms-pair"], check=None)
    assert not target.exists()
    dep = (Path("/lib/modules") / kver / "modules.dep").read_text()
    assert "pair_user" not in dep


@needs_root
def test_real_module_dir_needs_root(shared_dir: Path, owner: pwd.struct_passwd) -> None:
    state, src = owned_tree(shared_dir, owner)
    run_ckms_cmd(["-s", str(state), "add", str(src / "hello")])
    proc = subprocess.run(
        ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups",
         sys.executable, "-m", "ckms", "-C", "/dev/null", "-s", str(state), "-k", NEWEST,
         "install", "ckms-hello=1.0"], env=ckms_env(), capture_output=True, text=True, cwd="/")
    assert proc.returncode == 6, proc.stderr
    assert "needs root" in proc.stderr and "-d DESTDIR" in proc.stderr


KILLER = """
import os, signal, sys
from ckms import install
real = install.Transaction.{method}
def killed(self, *a, **k):
    {before}
    os.kill(os.getpid(), signal.SIGKILL)
install.Transaction.{method} = killed
from ckms.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_killed(method: str, args: List[str], before: str = "pass") -> int:
    code = KILLER.format(method=method, before=before)
    proc = subprocess.run([sys.executable, "-c", code, "-C", "/dev/null", *args],
                          env=ckms_env(), capture_output=True, text=True, cwd=ROOT)
    return proc.returncode


def test_killed_install_is_rolled_back(ckms: RunCkms, tmp_path: Path, statedir: Path) -> None:
    dest = tmp_path / "dest"
    kdir = dest / NEWEST / "extra/pair"
    kdir.mkdir(parents=True)
    sfx = suffix(NEWEST)
    (kdir / f"pair_core.ko{sfx}").write_bytes(b"original core")
    ckms("add", str(EXAMPLES / "pair"))
    ckms("-k", NEWEST, "-q", "build", "ckms-pair=2.1")
    args = ["-s", str(statedir), "-k", NEWEST, "-q", "-d", str(dest), "install", "ckms-pair=2.1"]
    # killed after both modules were copied, just before the commit
    assert run_killed("_commit_install", args) == -9
    assert (kdir / f"pair_user.ko{sfx}").exists()  # the half state on disk...
    status = ckms("status", "ckms-pair", "-k", NEWEST).stdout
    assert status.strip().endswith(": built")  # ...is not reported as installed
    out = ckms(*args[2:])  # the next writer rolls back, then installs
    assert "rolling back the interrupted install" in out.stderr
    assert ckms("status", "ckms-pair", "-k", NEWEST).stdout.strip().endswith(": installed")
    # killed in the middle of an uninstall: finished by the next writer
    uninst = [*args[:-2], "uninstall", "ckms-pair"]
    assert run_killed("_restore_originals", uninst) == -9
    out = ckms("-k", NEWEST, "-d", str(dest), "install", "ckms-pair=2.1")
    assert "finishing the interrupted uninstall" in out.stderr
    ckms("-k", NEWEST, "-d", str(dest), "uninstall", "ckms-pair")
    assert (kdir / f"pair_core.ko{sfx}").read_bytes() == b"original core"
    assert not (kdir / f"pair_user.ko{sfx}").exists()
    assert not list((statedir / "ckms-pair").glob(".txn-*"))


@needs_root
def test_initramfs_hook_only_for_initramfs_packages(shared_dir: Path,
                                                    owner: pwd.struct_passwd) -> None:
    state, src = owned_tree(shared_dir, owner)
    calls = shared_dir / "initramfs-calls"
    hook = recording_hook(shared_dir / "refresh-initramfs.sh", calls)
    config = shared_dir / "config.ini"
    config.write_text(f"[ckms]\ninitramfs_hook = {hook}\n")
    ini = src / "hello" / "ckms.ini"
    ini.write_text(ini.read_text().replace("version = 1.0", "version = 1.0\ninitramfs = yes"))
    kver = NEWEST
    base = ["-C", str(config), "-s", str(state), "-k", kver, "-q"]
    for pkg, ref in (("pair", "ckms-pair=2.1"), ("hello", "ckms-hello=1.0")):
        run_ckms_cmd([*base, "add", str(src / pkg)])
        run_ckms_cmd([*base, "build", ref])
    try:
        run_ckms_cmd([*base, "install", "ckms-pair=2.1"])
        assert not calls.exists()  # initramfs = no: never called
        run_ckms_cmd([*base, "install", "ckms-hello=1.0"])
        assert calls.read_text() == f"{kver}\n"
        run_ckms_cmd([*base, "-D", "uninstall", "ckms-hello"])
        assert calls.read_text() == f"{kver}\n"  # no depmod, no initramfs refresh
    finally:
        for name in ("ckms-hello", "ckms-pair"):
            run_ckms_cmd([*base, "uninstall", name], check=None)
