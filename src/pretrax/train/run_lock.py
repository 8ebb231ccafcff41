"""One trainer per run dir: an exclusive lock held for the run's life.

Two trainers on one run dir would write every metrics row twice and delete
each other's temporary checkpoints, so the second is refused with one line
naming the holder.

- A local run dir: fcntl.flock on RUN_DIR/.lock. The OS releases it when the
  holder dies, so kill -9 leaves nothing stale. The file holds who has it, and
  is removed when the run ends.
- A gs:// run dir (no flock on object storage): a lease, RUN_DIR/lock/N,
  made with the sweep claims' mechanism (sweeps/claims.py: attempt N created
  exclusively, the highest owns, the owner's heartbeat thread rewrites it).
  A lease is taken over when its holder released it, when its heartbeat is
  older than PRETRAX_LOCK_STALE_S (default 120 s), or at once when its holder
  was on this host and its pid is gone (kill -9, then a restart on one VM).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from pretrax import storage
from pretrax.errors import StorageError
from pretrax.sweeps.claims import Claim, Claims, PointClaims

DEFAULT_STALE_S = 120.0
LOCAL_NAME = ".lock"
LEASE_POINT = "lock"  # the lease's attempts are RUN_DIR/lock/1, /2, ...


class RunDirInUse(StorageError):
    """Another trainer holds this run dir."""


def stale_after() -> float:
    """Seconds without a heartbeat after which a gs:// lease is taken over (PRETRAX_LOCK_STALE_S)."""
    raw = os.environ.get("PRETRAX_LOCK_STALE_S", "")
    try:
        value = float(raw) if raw else DEFAULT_STALE_S
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise StorageError(f"PRETRAX_LOCK_STALE_S={raw!r} is not a positive number of seconds")
    return value


def holder() -> dict[str, Any]:
    """Who this trainer is, as written into the lock for a refused one to name."""
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = " ".join(["pretrax", *sys.argv[1:]]).replace("\n", " ")[:300]
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "command": command}


def in_use(run_dir: str, content: dict[str, Any] | None, released_how: str) -> RunDirInUse:
    if not content:
        who = "another pretrax train (not yet recorded)"
    else:
        who = (f"{content.get('command') or 'pretrax train'} on host {content.get('host')}, "
               f"pid {content.get('pid')}, since {content.get('since')}")
    return RunDirInUse(f"run dir {run_dir} is in use by {who}; wait for it to finish or stop it "
                       f"(a holder that died releases it {released_how})")


class LocalLock:
    """flock on RUN_DIR/.lock, held while the file descriptor is open; the file is removed on release.

    Removed so that a run leaves no trace of its lock (a refused resume leaves the run dir as it
    was). Safe because a new holder checks, once it has the flock, that the path still names the
    file it locked; one that locked a file its holder had just removed tries again.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCAL_NAME)
        self.made = []  # the folders this lock created, innermost first: removed on release when empty
        folder = os.path.abspath(run_dir)
        while not os.path.exists(folder) and folder != os.path.dirname(folder):
            self.made.append(folder)
            folder = os.path.dirname(folder)
        for _ in range(20):
            fd = self._open(run_dir)
            if self._lock(fd, run_dir):
                break
        else:
            raise StorageError(f"run.dir {run_dir}: could not lock {self.path} (other trainers kept racing for it)")
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder()).encode("utf-8"), 0)
        os.fsync(fd)

    def _open(self, run_dir: str) -> int:
        try:
            os.makedirs(run_dir, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"run.dir {run_dir} cannot be written ({e.strerror or e}); "
                               "give a directory this user can write") from None

    def _lock(self, fd: int, run_dir: str) -> bool:
        """True once fd holds the flock of the file now at self.path; raises RunDirInUse if another holds it."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                raw = os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"run.dir {run_dir}: cannot lock {self.path} ({e.strerror or e})") from None
            try:
                content = json.loads(raw.decode("utf-8"))
            except ValueError:
                content = None
            raise in_use(run_dir, content, "at once") from None
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it between our open and our flock
            os.close(fd)
        return same

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still held, so nobody can have locked the name in between
            os.close(self.fd)  # closing releases the flock
            self.fd = None
            for folder in self.made:  # a run refused after the lock (a later check) leaves no empty run dir
                try:
                    os.rmdir(folder)
                except OSError:  # not empty: the run wrote there
                    break


class Lease:
    """The gs:// lease: the highest RUN_DIR/lock/N, kept fresh by a heartbeat thread."""

    def __init__(self, run_dir: str, log=None):
        self.run_dir = run_dir
        self.log = log or (lambda line: print(f"pretrax: {line}", file=sys.stderr, flush=True))
        stale = stale_after()
        self.claims = Claims(run_dir, stale, owner=holder())
        self.claims.dir = run_dir  # the attempts live in RUN_DIR/lock/, not a sweep's claims/
        self.claim = self._take()
        self.heartbeat = self.claim.heartbeat(self._lost, self.log).__enter__()

    def _attempts(self) -> int:
        names = storage.listdir(storage.join(self.run_dir, LEASE_POINT))
        return max((int(n) for n in names if n.isdigit()), default=0)

    def _take(self) -> Claim:
        how = f"after {self.claims.stale_after:g} s without a heartbeat, at once if it ran on this host"
        for _ in range(20):  # each round loses only to another trainer that won the same attempt
            attempt = self._attempts()
            if attempt:
                state = PointClaims(attempt=attempt, content=self.claims.read(LEASE_POINT, attempt))
                if not (self.claims.is_stale(LEASE_POINT, state) or dead_here(state.content)):
                    raise in_use(self.run_dir, state.content, how)
            claim = self.claims.try_claim(LEASE_POINT, attempt + 1)
            if claim is not None:
                return claim
        raise StorageError(f"run dir {self.run_dir}: could not take its lease {LEASE_POINT}/ (other trainers "
                           "kept racing for it); try again")

    def _lost(self, claim: Claim) -> None:
        """Another trainer judged this lease stale (this one stalled): stop at once, writing nothing more."""
        print(f"pretrax: error: run dir {self.run_dir} was taken over by another trainer after this one missed "
              f"its heartbeats for {self.claims.stale_after:g} s; stopping so that only one trains it",
              file=sys.stderr, flush=True)
        os._exit(1)

    def release(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.__exit__(None, None, None)
            self.heartbeat = None
            try:
                if not self.claim.lost():
                    self.claim.release()
            except (StorageError, OSError) as e:  # the lease then goes stale on its own
                self.log(f"could not release the lease on {self.run_dir} ({e}); it is taken over after "
                         f"{self.claims.stale_after:g} s")


def dead_here(content: dict[str, Any] | None) -> bool:
    """The lease's holder ran on this host and its process is gone."""
    if not content or content.get("host") != socket.gethostname():
        return False
    try:
        pid = int(content.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(run_dir: str) -> LocalLock | Lease:
    """Take the run dir's lock, or raise RunDirInUse naming its holder; nothing is written when refused."""
    return Lease(run_dir) if storage.is_remote(run_dir) else LocalLock(run_dir)


@contextlib.contextmanager
def hold(run_dir: str, primary: bool = True) -> Iterator[None]:
    """Hold the lock while the body runs (process 0 only: the other processes are the same run)."""
    if not primary:
        yield
        return
    lock = acquire(run_dir)
    try:
        yield
    finally:
        lock.release()
