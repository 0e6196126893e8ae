"""Files that two processes, a kill or a full disk cannot corrupt: one atomic writer and one lock per run directory.

    write_atomic(path, content)   content -> <dir>/.<name>.<random>.tmp -> os.replace onto path; a reader sees the old
                                  or the new file, never half of one; on any failure the temporary file is removed
    directory_lock(dir)           <dir>/.lock (filelock): one process at a time trains in a directory; a second one is
                                  refused at once, with the pid of the holder (wait=True: it waits instead)
    check_writable(dir)           fail before any training when the directory cannot be written

A full disk or a read-only directory becomes a StorageError: one line naming the path and the reason
("No space left on device", "Read-only file system"), which the command line prints instead of a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Union

import filelock

log = logging.getLogger(__name__)

LOCK, LOCK_OWNER = ".lock", ".lock.owner"
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


class StorageError(RuntimeError):
    """A file could not be written: no space left, read-only file system, or no permission."""


class DirectoryInUse(RuntimeError):
    """Another process holds the lock of a run directory (`.directory`)."""

    def __init__(self, message: str, directory: Path):
        super().__init__(message)
        self.directory = directory

    def __reduce__(self):  # raised in a worker process, re-raised in its parent: both arguments cross the pipe
        return type(self), (str(self), self.directory)


def storage_error(path, err: OSError) -> Exception:
    """The one-line StorageError for an OSError of STORAGE_ERRNOS; any other error unchanged."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return StorageError(f"cannot write {path}: {os.strerror(err.errno)}")
    return err


def write_atomic(path, content: Union[str, bytes, Callable]) -> None:
    """Write `content` to `path` atomically: a str (UTF-8 text), bytes, or a function that writes to a binary file
    object (e.g. `lambda f: torch.save(obj, f)`). The temporary file has a unique name, so two writers never share
    it, and is removed if anything fails."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise storage_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and caches are ordinary, shareable files
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise storage_error(path, err) from None
        raise


def check_writable(directory) -> None:
    """Create `directory` and a scratch file in it; StorageError (one line) if that is impossible."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise storage_error(directory, err) from None


@contextlib.contextmanager
def directory_lock(directory, wait: bool = False, what: str = "--out-dir"):
    """Hold <directory>/.lock for the block. Held by another process: DirectoryInUse naming its pid (or, with
    wait=True, block until it is released). The lock is released by the OS when its holder dies, even by kill -9."""
    directory = Path(directory)
    check_writable(directory)
    lock = filelock.FileLock(directory / LOCK)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise DirectoryInUse(f"{directory} is in use by {_owner(directory)}; wait for it to finish or use "
                                 f"another {what}", directory) from None
        log.info("%s is in use by %s; waiting for it", directory, _owner(directory))
        lock.acquire()
    try:
        owner = f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        write_atomic(directory / LOCK_OWNER, owner + "\n")
        yield
    finally:
        lock.release()


def _owner(directory: Path) -> str:
    try:
        return (directory / LOCK_OWNER).read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"
