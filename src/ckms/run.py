"""Running hooks and tools: a minimal environment, one log per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import CkmsError

Cmd = Union[str, Sequence[Union[str, Path]]]

# Variables passed through from the caller's environment into hooks; the rest
# of the environment is not inherited.
PASSTHROUGH = ("PATH", "TERM", "LANG", "LC_ALL", "SOURCE_DATE_EPOCH")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# module compressors, by file suffix, with the options kmod's tools expect
COMPRESSORS = {
    ".gz": ["gzip", "-9", "-n", "-c"],
    ".xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"],
    ".zst": ["zstd", "-q", "-19", "-c"],
}
DECOMPRESSORS = {".gz": ["gzip", "-dc"], ".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"]}


def base_env() -> Dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["SHELL"] = "/bin/sh"
    env["HOME"] = os.environ.get("HOME", "/")
    return env


def run_logged(cmd: Cmd, *, cwd: Path, env: Mapping[str, str], log: Path,
               echo: Optional[IO[str]] = None, as_ids: Optional[Tuple[int, int]] = None,
               pass_fds: Sequence[int] = ()) -> int:
    """Run cmd (a shell string for /bin/sh, or an argv); log all its output.

    The output goes to ``log`` and, when ``echo`` is given, to it as well.
    With ``as_ids`` (uid, gid) it runs as that user, with no supplementary
    groups.  ``pass_fds`` stay open in the child (a make jobserver's pipe).
    Returns the exit status (negative for a signal).
    """
    argv: List[str] = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as logfh:
        logfh.write(f"$ {cmd if isinstance(cmd, str) else ' '.join(argv)}\n".encode())
        logfh.flush()
        try:
            ids = {} if as_ids is None else {"user": as_ids[0], "group": as_ids[1],
                                             "extra_groups": [], "umask": 0o022}
            proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=tuple(pass_fds), **ids)  # type: ignore[call-overload]
        except OSError as exc:
            logfh.write(f"cannot run: {exc}\n".encode())
            raise CkmsError(f"cannot run {argv[0]}: {exc.strerror}") from None
        assert proc.stdout is not None
        stream = proc.stdout
        for chunk in iter(lambda: stream.read1(65536), b""):
            logfh.write(chunk)
            if echo is not None:
                echo.write(chunk.decode(errors="replace"))
                echo.flush()
        rc: int = proc.wait()
        logfh.write(f"[exit status {rc}]\n".encode())
    return rc


def run_quiet(argv: Sequence[Union[str, Path]], *, cwd: Optional[Path] = None,
              env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output (for short, well-behaved tools)."""
    try:
        return subprocess.run([str(a) for a in argv], cwd=cwd, env=None if env is None else dict(env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as exc:
        raise CkmsError(f"cannot run {argv[0]}: {exc.strerror}") from None


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def stdout_echo(quiet: bool) -> Optional[IO[str]]:
    return None if quiet else sys.stdout


def run_quiet_bytes(argv: List[str], data: Optional[bytes] = None) -> bytes:
    """Run a filter tool (a compressor) on data or its file argument; its output, or CkmsError."""
    try:
        proc = subprocess.run(argv, input=data, stdin=None if data is not None else subprocess.DEVNULL,
                              capture_output=True)
    except OSError as exc:
        raise CkmsError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise CkmsError(f"{argv[0]} failed on {argv[-1]}: "
                        f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def recompressed(path: Path, suffix: str) -> bytes:
    """The content of a module file (any compression) compressed for suffix ('' for none)."""
    have = next((s for s in DECOMPRESSORS if path.name.endswith(s)), "")
    if have == suffix:
        return path.read_bytes()
    if not have:
        return run_quiet_bytes(COMPRESSORS[suffix] + [str(path)])
    plain = run_quiet_bytes(DECOMPRESSORS[have] + [str(path)])
    return run_quiet_bytes(COMPRESSORS[suffix], plain) if suffix else plain
