"""Writing files on volumes that other pods share and read.

- Temporaries are named ``.<name>.<kind>-<host>-<pid>-<random>``: identical pods on a ReadWriteMany
  volume often have the same PID, so a PID alone would make two writers share one temporary.
- Files land by ``os.replace`` of a complete, fsynced temporary, so a reader never sees half a file.
- What we create is mode 0755 (directories) / 0644 (files) whatever the umask: the serving pod that
  loads a model may run as another uid.
- ``os_error`` finds the operating-system error (a full disk) that torch and safetensors wrap in
  their own exception types, so callers can report it as such.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

DIR_MODE = 0o755
FILE_MODE = 0o644
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def unique_suffix() -> str:
    """``<host>-<pid>-<random>``: distinct across processes, pods and nodes."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh name beside ``target`` (same directory, so a rename is atomic): ``.<name>.<kind>-<unique>``."""
    return target.with_name(f".{target.name}.{kind}-{unique_suffix()}")


def remove_stale_temporaries(directory: Path, older_than: float) -> None:
    """Remove temporary files (``.*.tmp-*``) not modified for ``older_than`` seconds: what killed writers
    left. On a shared volume a live writer on another node cannot be asked, so only age tells them apart."""
    cutoff = time.time() - older_than
    for path in directory.glob(".*.tmp-*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:  # another node removed it first
            continue


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, each one we create mode 0755."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(path, DIR_MODE)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_tree(directory: Path) -> None:
    """Before renaming a staged directory into place: fixed modes, then everything fsynced."""
    os.chmod(directory, DIR_MODE)
    for file in directory.iterdir():
        os.chmod(file, FILE_MODE)
        fsync_path(file)
    fsync_path(directory)


@contextmanager
def atomic_file(target: Path, keep_existing: Callable[[Path], bool] | None = None) -> Iterator[IO[bytes]]:
    """Write ``target`` through a unique temporary that replaces it only once complete and fsynced;
    on any exception the temporary is removed and ``target`` is untouched.

    ``keep_existing(tmp)`` true: the temporary is dropped and ``target`` stays as it is (another
    writer's equal file, which readers may hold open: on NFS, replacing it under them breaks their reads).
    """
    tmp = temp_path(target)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        if keep_existing is not None and keep_existing(tmp):
            tmp.unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(target: Path, data: bytes | str) -> None:
    with atomic_file(target) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, one in its cause/context chain (torch.save raises a
    RuntimeError from the failed write), or one a Rust library (safetensors) names as "(os error N)"."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        match = _RUST_OS_ERROR.search(str(seen))
        if match:
            errno = int(match.group(1))
            return OSError(errno, os.strerror(errno))
        seen = seen.__cause__ or seen.__context__
    return None
