"""Evaluating shell configuration files (dkms.conf, framework.conf) safely.

DKMS sources these files into its own shell, as root, several times.  Here a
set of files is evaluated exactly once, by one ``bash --noprofile --norc``
process started in a clean environment (PATH, LC_ALL=C, HOME=/ and nothing
else), never as root, in its own process group, with a time limit and stdin
on /dev/null.  The files see the shell variables DKMS gives them
(``kernelver``, ``arch``...), their own standard output goes to /dev/null as
with DKMS, and only the requested variables come back: after a random marker,
as NUL-separated ``name, index, value`` records, so arrays (sparse ones too),
quotes and newlines in values, and files that print things, all read back
exactly.  A file with CRLF line ends is fed to bash without the CRs.  Every
file is checked with ``bash -n`` first, so a syntax error is an error and not
a half-read file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, PermissionProblem
from ..privileges import is_root, owner_ids
from ..run import DEFAULT_PATH

Warn = Callable[[str], None]
# name -> index -> value: what bash had in the requested variables (a scalar is index 0)
Values = Dict[str, Dict[int, str]]

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\[[0-9]+\])?$")
_SYNTAX = 98  # the driver's exit status when bash -n rejects a file
_UNREADABLE = 96  # ... when a file cannot be read

# The program bash runs.  Arguments: marker, names to print, override dir,
# context assignments, "--", files, "--", NAME[=VALUE] assignments made last.
# It is not a function on purpose: a file sourced inside a function would
# make its 'declare'd variables local to it.  After the first file, when an
# override dir is given, module/module_version default to PACKAGE_NAME and
# PACKAGE_VERSION and DKMS's override files are appended to the list.
_DRIVER = r"""
shopt -s extglob
_ckms_marker=$1 _ckms_names=$2 _ckms_etc=$3
shift 3
while [[ $1 != -- ]]; do declare -- "$1"; shift; done; shift
_ckms_files=()
while [[ $1 != -- ]]; do _ckms_files+=("$1"); shift; done; shift
_ckms_i=0
while (( _ckms_i < ${#_ckms_files[@]} )); do
    _ckms_f=${_ckms_files[_ckms_i]}
    _ckms_i=$((_ckms_i + 1))
    (( _ckms_i == 1 )) && [[ ! -e $_ckms_f ]] && { echo "$_ckms_f: not found" >&2; exit 96; }
    if [[ -e $_ckms_f ]]; then
        _ckms_text=$(< "$_ckms_f") || exit 96
        if [[ $_ckms_text == *$'\r'* ]]; then
            _ckms_text=${_ckms_text//$'\r\n'/$'\n'}
            _ckms_text=${_ckms_text%$'\r'}
            bash --noprofile --norc -O extglob -n -c "$_ckms_text" "$_ckms_f" || exit 98
            . <(printf '%s\n' "$_ckms_text") >/dev/null
        else
            bash --noprofile --norc -O extglob -n "$_ckms_f" || exit 98
            . "$_ckms_f" >/dev/null
        fi
        set +e +u
    fi
    if (( _ckms_i == 1 )) && [[ $_ckms_etc ]]; then
        [[ $module ]] || module=$PACKAGE_NAME
        [[ $module_version ]] || module_version=$PACKAGE_VERSION
        if [[ $module =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ &&
              $module_version =~ ^[A-Za-z0-9][A-Za-z0-9._+~:-]*$ ]]; then
            for _ckms_o in "$module" "$module-$module_version" \
                    "$module-$module_version-$kernelver" "$module-$module_version-$kernelver-$arch" \
                    "$module--$kernelver" "$module--$kernelver-$arch"; do
                _ckms_files+=("$_ckms_etc/$_ckms_o.conf")
            done
        fi
    fi
done
for _ckms_a in "$@"; do
    builtin printf -v "${_ckms_a%%=*}" '%s' "${_ckms_a#*=}"
done
builtin printf '%s\0' "$_ckms_marker"
for _ckms_n in $_ckms_names; do
    eval "_ckms_idx=(\"\${!$_ckms_n[@]}\")"
    for _ckms_k in "${_ckms_idx[@]}"; do
        eval "_ckms_v=\${$_ckms_n[\$_ckms_k]}"
        builtin printf '%s\0%s\0%s\0' "$_ckms_n" "$_ckms_k" "$_ckms_v"
    done
done
"""


def eval_ids(run_as: Optional[Tuple[int, int]], owner_of: Optional[Path]) -> Optional[Tuple[int, int]]:
    """Who evaluates a file: None (ourselves) unless we are root; never root.

    As root: ``run_as`` when it is not root, else the owner of ``owner_of``
    (the state tree) when that is not root, else user ``nobody``.
    """
    if not is_root():
        return None
    if run_as is not None and run_as[0] != 0:
        return run_as
    if owner_of is not None:
        try:
            ids = owner_ids(owner_of)
        except OSError:
            ids = (0, 0)
        if ids[0] != 0:
            return ids
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise PermissionProblem("there is no user 'nobody' to evaluate shell configuration "
                                "files as; create it, or own the state tree by a user") from None
    return nobody.pw_uid, nobody.pw_gid


def evaluate(files: Sequence[Path], names: Sequence[str], *, label: Path, cwd: Path,
             warn: Warn, context: Optional[Mapping[str, str]] = None,
             override_dir: Optional[Path] = None,
             assignments: Sequence[Tuple[str, str]] = (),
             ids: Optional[Tuple[int, int]] = None, timeout: float = 30.0) -> Values:
    """Source ``files`` in one bash; return ``names``.

    A first file the user cannot reach is an error; later missing ones
    (override files) are skipped.

    ``context`` holds the shell variables the files see (not exported).
    ``override_dir``: after the first file, source DKMS's per-module override
    files from there.  ``assignments`` (``NAME`` or ``NAME[i]``, value) are
    made after every file, as DKMS's ``--directive``.  ``label`` names the
    configuration in error messages.  What the files write on stderr is
    passed to ``warn``.  ConfigError for a syntax error, an unreadable file,
    a failed or killed evaluation.
    """
    for name in [*names, *(context or {})]:
        if not _IDENT_RE.match(name):
            raise ValueError(f"not a shell variable name: {name!r}")
    for target, _ in assignments:
        if not _ASSIGN_RE.match(target):
            raise ConfigError(f"{label}: cannot set {target!r}: not a variable or array element")
    marker = f"ckms-{secrets.token_hex(16)}"
    argv = ["bash", "--noprofile", "--norc", "-c", _DRIVER, "ckms-eval", marker, " ".join(names),
            str(override_dir or ""),
            *(f"{k}={v}" for k, v in (context or {}).items()), "--",
            # where the files really are: the tree's links may lead through directories
            # the unprivileged user cannot enter (the source is what DKMS means)
            *(os.path.realpath(f) for f in files), "--",
            *(f"{k}={v}" for k, v in assignments)]
    env = {"PATH": DEFAULT_PATH, "LC_ALL": "C", "HOME": "/"}
    who = f"uid {ids[0]}" if ids else "this user"
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                argv, cwd=os.path.realpath(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=errfile, start_new_session=True, umask=0o022,
                user=ids[0] if ids else None, group=ids[1] if ids else None,
                extra_groups=[] if ids else None)
        except OSError as exc:
            raise ConfigError(f"{label}: cannot run bash to evaluate it as {who}: "
                              f"{exc.strerror}") from None
        out, finished = _read_until_exit(proc, timeout)
        errfile.seek(0)
        errtext = errfile.read().decode(errors="replace").strip()
    if not finished:
        raise ConfigError(
            f"{label}: evaluating it took longer than {timeout:g} s, so it was killed "
            "(an endless loop, or a command waiting for something?)")
    if proc.returncode == _SYNTAX:
        raise ConfigError(f"{label}: bash reports a syntax error:\n{errtext}")
    if proc.returncode == _UNREADABLE:
        raise ConfigError(f"{label}: cannot read it as {who}:\n{errtext}")
    _, sep, records = out.partition(f"{marker}\0".encode())
    if proc.returncode != 0 or not sep:
        raise ConfigError(f"{label}: evaluating it with bash failed (exit status "
                          f"{proc.returncode}, the file exited before its end)"
                          + (f":\n{errtext}" if errtext else ""))
    for line in errtext.splitlines():
        if line.strip():
            warn(line if line.startswith(str(label)) else f"{label}: {line}")
    return _parse(records, label)


def _read_until_exit(proc: subprocess.Popen[bytes], timeout: float) -> Tuple[bytes, bool]:
    """proc's stdout up to its end (bash exited), or up to the time limit.

    Then the whole process group is killed, so nothing the file started in
    the background outlives the evaluation: bash is not reaped before, so its
    group id cannot have been reused.  Returns (output, finished in time).
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    finished = False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not finished and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                data = os.read(fd, 65536)
                chunks.append(data)
                finished = not data
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    proc.wait()
    return b"".join(chunks), finished


def _parse(records: bytes, label: Path) -> Values:
    fields: List[str] = records.decode(errors="replace").split("\0")
    if fields[-1] != "" or (len(fields) - 1) % 3:
        raise ConfigError(f"{label}: could not read back what bash evaluated (truncated output)")
    values: Values = {}
    for i in range(0, len(fields) - 1, 3):
        name, index, value = fields[i:i + 3]
        if not index.isdigit():
            raise ConfigError(f"{label}: {name} must be a scalar or an indexed array, "
                              f"not an associative array (key {index!r})")
        values.setdefault(name, {})[int(index)] = value
    return values
