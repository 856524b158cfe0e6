"""Boot a real kernel under QEMU with a minimal busybox + kmod initramfs.

The harness is reusable: `boot_with_modules(kver, module_root, commands, workdir)` packs the module
tree `module_root/<kver>` (as installed with `ckms -d module_root`) into an initramfs together with
busybox, kmod's real `modprobe` and the kernel's own `modules.builtin*`/`modules.order`, runs
`depmod` over it, boots kernel `kver` and runs each shell command of `commands` in `/init`. It
returns the console text and, for each command, its output and exit status.

Nothing here needs root. Software emulation (TCG) only: KVM does not work on the CI machine.
The uncompressed `vmlinux`, extracted from `/boot/vmlinuz-<kver>`, boots through PVH, which is
much faster under emulation than running the bzImage decompressor; `vmlinuz` is the fallback.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import select
import shutil
import stat
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

QEMU = "qemu-system-x86_64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
KMOD = "/usr/bin/kmod"
DEPMOD_CANDIDATES = ("/usr/sbin/depmod", "/sbin/depmod")
KMOD_TOOLS = ("modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod")
KERNEL_MODULE_FILES = ("modules.builtin", "modules.builtin.modinfo", "modules.order")

MARK = "@@ckms-vm"
STATUS_RE = re.compile(rf"^{MARK} status (\d+) (\d+)$", re.M)
OUT_RE = re.compile(rf"^{MARK} out (\d+)\| ?(.*)$", re.M)
DONE_LINE = f"{MARK} done"
# Printed early by every kernel (unless "quiet"), or by /init: a booting kernel, not a hung loader.
ALIVE_SIGNS = (b"Linux version ", MARK.encode())


class VMError(Exception):
    """The VM could not be prepared or booted."""


# --------------------------------------------------------------------------- discovery

def busybox_path() -> Optional[str]:
    """A statically linked busybox (package busybox-static), or None."""
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file() and os.access(p, os.X_OK) and _is_static(p):
            return str(p)
    return None


def depmod_path() -> Optional[str]:
    for cand in DEPMOD_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("depmod")


def _is_static(binary: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader)."""
    with binary.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3A], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") != pt_interp
               for i in range(phnum))


def kernel_image(kver: str) -> Path:
    return Path(f"/boot/vmlinuz-{kver}")


def newest_kernel(kvers: Sequence[str]) -> Optional[str]:
    """The newest of kvers, comparing numeric parts numerically ("6.12" > "6.1")."""
    def key(kver: str) -> Tuple[Tuple[int, int, str], ...]:
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                     for p in re.split(r"[.+\-~]", kver))
    return max(kvers, key=key) if kvers else None


def missing_requirements() -> List[str]:
    """Which tools this harness needs are missing here (empty list: none)."""
    why: List[str] = []
    if shutil.which(QEMU) is None:
        why.append(f"{QEMU} not found (apt-get install qemu-system-x86)")
    if busybox_path() is None:
        why.append("no static busybox at /bin/busybox (apt-get install busybox-static)")
    if not os.access(KMOD, os.X_OK) or depmod_path() is None:
        why.append(f"{KMOD} or depmod not found (apt-get install kmod)")
    if shutil.which("ldd") is None:
        why.append("ldd not found (apt-get install libc-bin)")
    return why


# --------------------------------------------------------------------------- vmlinux

def _decompress_payload(payload: bytes) -> Optional[bytes]:
    """Decompress a bzImage payload (gzip, xz or zstd), or None for other formats."""
    if payload[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return d.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        zstd = shutil.which("zstd")
        if zstd is None:
            return None
        # The kernel appends the decompressed size (4 bytes, little endian) after the frame.
        size = int.from_bytes(payload[-4:], "little")
        out = subprocess.run([zstd, "-dcq"], input=payload[:-4], capture_output=True, check=False)
        if out.returncode != 0 or len(out.stdout) != size:
            return None
        return out.stdout
    return None


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Optional[Path]:
    """Extract the ELF vmlinux from a bzImage, using its boot header to find the payload.

    Returns None when the image cannot be decompressed here (unknown format, no zstd tool).
    """
    data = vmlinuz.read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    setup_sects = data[0x1F1] or 4
    payload_offset = int.from_bytes(data[0x248:0x24C], "little")
    payload_length = int.from_bytes(data[0x24C:0x250], "little")
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start:start + payload_length]
    try:
        elf = _decompress_payload(payload)
    except (lzma.LZMAError, zlib.error):
        elf = None
    if not elf or elf[:4] != b"\x7fELF":
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(elf)
    tmp.replace(dest)
    return dest


# --------------------------------------------------------------------------- initramfs

@dataclass
class _Entry:
    mode: int
    data: bytes = b""
    rdev: Tuple[int, int] = (0, 0)


@dataclass
class Initramfs:
    """An in-memory newc cpio archive: path (no leading '/') -> entry; parents are implied."""

    entries: Dict[str, _Entry] = field(default_factory=dict)

    def mkdir(self, path: str) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), _Entry(stat.S_IFDIR | 0o755))

    def _parent(self, path: str) -> str:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        return path

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.entries[self._parent(path)] = _Entry(stat.S_IFREG | mode, data)

    def copy(self, path: str, source: Path, mode: Optional[int] = None) -> None:
        """Copy source (following symlinks) to path, keeping its permission bits by default."""
        perm = stat.S_IMODE(source.stat().st_mode) if mode is None else mode
        self.file(path, source.read_bytes(), perm)

    def symlink(self, path: str, target: str) -> None:
        self.entries[self._parent(path)] = _Entry(stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.entries[self._parent(path)] = _Entry(stat.S_IFCHR | mode, rdev=(major, minor))

    def copy_tree(self, path: str, source: Path) -> None:
        """Copy a directory tree (regular files, dirs and symlinks)."""
        self.mkdir(path)
        for child in sorted(source.iterdir()):
            target = f"{path.strip('/')}/{child.name}"
            if child.is_symlink():
                self.symlink(target, os.readlink(child))
            elif child.is_dir():
                self.copy_tree(target, child)
            elif child.is_file():
                self.copy(target, child)

    def write_to_dir(self, root: Path) -> None:
        """Materialize the tree (without device nodes) so tools like depmod can work on it."""
        for name in sorted(self.entries):
            e = self.entries[name]
            p = root / name
            if stat.S_ISDIR(e.mode):
                p.mkdir(parents=True, exist_ok=True)
            elif stat.S_ISREG(e.mode):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(e.data)
                p.chmod(stat.S_IMODE(e.mode))
            elif stat.S_ISLNK(e.mode):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.symlink_to(e.data.decode())

    def write_cpio_gz(self, dest: Path) -> Path:
        out = bytearray()
        for ino, name in enumerate(sorted(self.entries), start=1):
            _cpio_entry(out, ino, name, self.entries[name])
        _cpio_entry(out, 0, "TRAILER!!!", _Entry(0))
        dest.write_bytes(gzip.compress(bytes(out), compresslevel=1))
        return dest


def _cpio_entry(out: bytearray, ino: int, name: str, e: _Entry) -> None:
    bname = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(bname), 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    out += header + bname + b"\0" * (-(len(header) + len(bname)) % 4)
    out += e.data + b"\0" * (-len(e.data) % 4)


def _shared_libraries(binary: str) -> List[Path]:
    """The shared libraries and the dynamic loader ldd reports for binary."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs: List[Path] = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def init_script(commands: Sequence[str]) -> str:
    """/init: mount the pseudo file systems, run each command between markers, power off."""
    lines = [
        "#!/bin/sh",
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "exec </dev/console >/dev/console 2>&1",
    ]
    for i, cmd in enumerate(commands):
        # The output goes to a file first, then to the console one prefixed line at a time, so
        # it can be told from kernel messages printed meanwhile.
        lines += [f"echo '{MARK} begin {i}'",
                  f"{{\n{cmd.strip() or ':'}\n}} >/tmp/out.{i} 2>&1 </dev/null",
                  "rc=$?",
                  f"sed 's/^/{MARK} out {i}| /' /tmp/out.{i}",
                  f"echo \"{MARK} status {i} $rc\""]
    lines += [
        f"echo '{DONE_LINE}'",
        # Power off (ACPI); should that fail, reboot: with -no-reboot QEMU exits either way.
        "poweroff -f",
        "sleep 5",
        "echo b > /proc/sysrq-trigger",
        "",
    ]
    return "\n".join(lines)


def build_initramfs(kver: str, module_root: Path, commands: Sequence[str], workdir: Path) -> Path:
    """Pack busybox, kmod, the module tree module_root/kver and /init into workdir/initrd.gz.

    module_root is the directory given to `ckms -d`; its kver subdirectory is copied to
    /lib/modules/kver, together with the kernel's own modules.builtin* and modules.order, and
    depmod (with an empty config dir) indexes it. modprobe in the VM must be called as
    /sbin/modprobe (busybox has its own) with -C /etc/modprobe.d (empty).
    """
    busybox = busybox_path()
    depmod = depmod_path()
    if busybox is None or depmod is None:
        raise VMError("; ".join(missing_requirements()))
    src_modules = module_root / kver
    if not src_modules.is_dir():
        raise VMError(f"no module tree at {src_modules}")

    fs = Initramfs()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc/modprobe.d",
              "lib/modules"):
        fs.mkdir(d)
    fs.chardev("dev/console", 5, 1)
    fs.chardev("dev/null", 1, 3, 0o666)

    fs.copy("bin/busybox", Path(busybox), 0o755)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and applet not in KMOD_TOOLS:
            fs.symlink(f"bin/{applet}", "busybox")

    fs.copy("usr/bin/kmod", Path(KMOD), 0o755)
    for lib in _shared_libraries(KMOD):
        fs.copy(str(lib), lib.resolve(), 0o755)
    for tool in KMOD_TOOLS:
        fs.symlink(f"sbin/{tool}", "/usr/bin/kmod")

    fs.copy_tree(f"lib/modules/{kver}", src_modules)
    for name in KERNEL_MODULE_FILES:
        src = Path("/lib/modules") / kver / name
        if src.is_file():
            fs.copy(f"lib/modules/{kver}/{name}", src, 0o644)

    # depmod works on a real directory; its indexes go into the archive.
    stage = workdir / "initramfs-modules"
    if stage.exists():
        shutil.rmtree(stage)
    sub = Initramfs({k: v for k, v in fs.entries.items() if k.startswith(f"lib/modules/{kver}")})
    sub.write_to_dir(stage)
    empty_conf = workdir / "depmod.d"
    empty_conf.mkdir(exist_ok=True)
    proc = subprocess.run([depmod, "-b", str(stage), "-C", str(empty_conf), kver],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VMError(f"depmod -b {stage} {kver} failed:\n{proc.stdout}{proc.stderr}")
    fs.copy_tree(f"lib/modules/{kver}", stage / "lib" / "modules" / kver)

    fs.file("init", init_script(commands).encode(), 0o755)
    return fs.write_cpio_gz(workdir / "initrd.gz")


# --------------------------------------------------------------------------- boot

@dataclass
class CommandResult:
    command: str
    output: str
    status: Optional[int]  # None: the command never finished


@dataclass
class BootResult:
    console: str
    kernel_image: Path
    pvh: bool
    seconds: float
    returncode: Optional[int]
    timed_out: bool
    commands: List[CommandResult]

    @property
    def completed(self) -> bool:
        """/init ran every command and reached the end."""
        return DONE_LINE in self.console


def parse_commands(console: str, commands: Sequence[str]) -> List[CommandResult]:
    """Each command's output (stdout and stderr) and exit status, from the console text."""
    outputs: Dict[int, List[str]] = {}
    for m in OUT_RE.finditer(console):
        outputs.setdefault(int(m.group(1)), []).append(m.group(2))
    statuses = {int(m.group(1)): int(m.group(2)) for m in STATUS_RE.finditer(console)}
    return [CommandResult(cmd, "\n".join(outputs.get(i, [])), statuses.get(i))
            for i, cmd in enumerate(commands)]


def _run_qemu(image: Path, initrd: Path, append: str, timeout: float, memory: str,
              alive_timeout: Optional[float]) -> Tuple[str, Optional[int], bool, bool]:
    """Run QEMU until it exits; returns (console, returncode, timed_out, kernel_started).

    With alive_timeout, give up early when the kernel has printed nothing by then.
    """
    cmd = [QEMU, "-accel", "tcg", "-machine", "pc", "-cpu", "max", "-smp", "1", "-m", memory,
           "-nodefaults", "-nographic", "-serial", "stdio", "-monitor", "none", "-net", "none",
           "-no-reboot", "-kernel", str(image), "-initrd", str(initrd), "-append", append]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    chunks: List[bytes] = []
    tail = b""
    start = time.monotonic()
    timed_out = False
    alive = False
    try:
        fd = proc.stdout.fileno()
        while True:
            elapsed = time.monotonic() - start
            if elapsed > timeout or (alive_timeout is not None and not alive
                                     and elapsed > alive_timeout):
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not alive:
                tail = (tail + chunk)[-(len(chunk) + 64):]
                alive = any(sign in tail for sign in ALIVE_SIGNS)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        rest = proc.stdout.read()
        if rest:
            chunks.append(rest)
        proc.stdout.close()
    raw = b"".join(chunks)
    alive = alive or any(sign in raw for sign in ALIVE_SIGNS)
    console = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "")
    return console, proc.returncode, timed_out, alive


def boot_with_modules(kver: str, module_root: Path, commands: Sequence[str], workdir: Path,
                      timeout: float = 240.0, memory: str = "512M",
                      extra_append: Sequence[str] = ()) -> BootResult:
    """Boot kernel kver with module_root/kver in its initramfs and run commands in /init.

    Tries the extracted vmlinux (PVH) first and falls back to /boot/vmlinuz-kver when that does
    not boot. QEMU is always killed on the way out.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    vmlinuz = kernel_image(kver)
    if not vmlinuz.is_file():
        raise VMError(f"{vmlinuz} missing")
    initrd = build_initramfs(kver, module_root, commands, workdir)
    append = " ".join(["console=ttyS0", "panic=-1", "loglevel=7", "rdinit=/init",
                       "nokaslr", "mitigations=off", *extra_append])

    deadline = time.monotonic() + timeout
    attempts: List[Tuple[Path, bool]] = []
    vmlinux = extract_vmlinux(vmlinuz, workdir / f"vmlinux-{kver}")
    if vmlinux is not None:
        attempts.append((vmlinux, True))
    attempts.append((vmlinuz, False))

    result: Optional[BootResult] = None
    try:
        for image, pvh in attempts:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            t0 = time.monotonic()
            # A PVH kernel that does not start says nothing: give it a minute, then fall back.
            console, rc, timed_out, alive = _run_qemu(image, initrd, append, left, memory,
                                                      alive_timeout=min(60.0, left) if pvh else None)
            result = BootResult(console, image, pvh, time.monotonic() - t0, rc, timed_out,
                                parse_commands(console, commands))
            if alive:
                break
    finally:
        if vmlinux is not None:  # tens of MB, cheap to extract again
            vmlinux.unlink(missing_ok=True)
    if result is None:
        raise VMError(f"no time left to boot {kver}")
    return result
