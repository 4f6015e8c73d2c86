"""An exclusive lock on a run folder, so that two processes never write one run at once.

The lock is an advisory ``flock`` on ``<run>/.lock``, held for the whole of ``rl-maml train`` (and
while ``rl-maml eval`` writes its results). The kernel releases it when its process ends, however
it ends, so a lock left by a killed process is free again at once: the file's content (the
holder's pid, host, command and start time) is only what the error message reports. On systems
without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """The run folder is in use by another process."""


class RunLock:
    """``with RunLock(run_dir, "train"):`` holds the folder's lock or raises :class:`RunLockedError`."""

    def __init__(self, run_dir: Path, purpose: str):
        self.path = Path(run_dir) / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace")
            os.close(fd)
            try:
                info = json.loads(holder)
                who = (f"process {info['pid']} on {info['host']} ({info['purpose']}, started "
                       f"{info['started']}: {info['command']})")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunLockedError(f"{self.path.parent} is in use by {who}; wait for it to finish or stop it, "
                                 "or use another --run-dir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
