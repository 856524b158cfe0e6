"""Least privilege: drop to the owner of the state tree.

As root, everything but copying modules into the real module directory (and
running depmod) is done as the user owning the state directory, with its
primary group, no supplementary groups and umask 022.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PermissionProblem


def is_root() -> bool:
    return os.geteuid() == 0


def drop_to_owner(statedir: Path) -> None:
    """Become the owner of statedir for the rest of the process (root only)."""
    os.umask(0o022)
    if not is_root():
        return
    st = statedir.stat()
    if st.st_uid == 0:
        return
    try:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)
    except OSError as exc:
        raise PermissionProblem(
            f"cannot drop privileges to the owner of {statedir} "
            f"(uid {st.st_uid}): {exc.strerror}"
        ) from None
    os.environ["HOME"] = "/"  # root's HOME is not the owner's to write


def owner_ids(statedir: Path) -> tuple[int, int]:
    st = statedir.stat()
    return st.st_uid, st.st_gid


def chown_to_owner(path: Path, statedir: Path) -> None:
    """Give a path created by root inside the state tree to the tree's owner."""
    if is_root():
        uid, gid = owner_ids(statedir)
        if uid != 0:
            os.lchown(path, uid, gid)
