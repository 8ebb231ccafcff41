"""Claims: which worker runs which point of a shared sweep, kept as objects in DIR/claims/.

Object storage (and a disk) offers one atomic choice among racing
machines, create-if-absent (storage.create_exclusive): of several workers
creating the same name, exactly one succeeds. There is no rename, append or
lock, so every decision here is a name created once:

  claims/POINT/1         attempt 1: created by the worker that claims POINT;
                         its owner rewrites it (heartbeat_at) every few seconds
  claims/POINT/2         attempt 2: created by the worker that took over a
                         stale attempt 1, and so on; the highest attempt owns
  claims/POINT/N.ok      attempt N finished (N.failed: it failed); written
                         once, by attempt N's owner

An attempt is stale when its owner released it (preempted, or crashed in
Python) or its heartbeat_at is more than stale_after seconds old. Any
worker may then create attempt N+1; exactly one wins, and it resumes the
point from its newest checkpoint. The old owner, should it be alive after
all (stalled), sees attempt N+1 at its next heartbeat and stops at once.

Times are wall-clock seconds written into the objects by their owners and
compared with the reader's own clock. That is safe when the machines'
clocks agree to well within stale_after (minutes by default; cloud VMs keep
theirs within milliseconds by NTP); a claim that cannot be read (caught
between its creation and its first write) is judged by how long this
reader has seen it unreadable, on its own clock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pretrax import storage
from pretrax.errors import PretraxError

_NAME = re.compile(r"^(\d+)(?:\.(ok|failed))?$")


def claims_dir(sweep_dir: str) -> str:
    return storage.join(sweep_dir, "claims")


def me() -> dict[str, Any]:
    """This worker's identity, written into its claims."""
    return {"worker": uuid.uuid4().hex[:8], "host": socket.gethostname(), "pid": os.getpid()}


def heartbeat_interval(stale_after: float) -> float:
    """How often an owner rewrites its claim: several times within stale_after, at most every 30 s."""
    return min(stale_after / 5, 30.0)


@dataclasses.dataclass
class PointClaims:
    """What claims/POINT/ holds: the highest attempt, its outcome, and its claim's content once read."""

    attempt: int = 0  # 0: never claimed
    outcome: str | None = None  # "ok" / "failed": the highest attempt finished
    content: dict[str, Any] | None = None  # the highest attempt's claim (None: not read, or unreadable)

    def age(self, now: float) -> float | None:
        """Seconds since the owner's last heartbeat; None when its claim could not be read."""
        if self.content is None:
            return None
        return now - float(self.content.get("heartbeat_at", 0))


class Claims:
    """The claims of one sweep dir, as seen by one worker."""

    def __init__(self, sweep_dir: str, stale_after: float, owner: dict[str, Any] | None = None):
        self.dir = claims_dir(sweep_dir)
        self.stale_after = stale_after
        self.owner = owner or me()
        self._unreadable_since: dict[str, float] = {}  # claim url -> when this worker first failed to read it

    def scan(self, names: Iterable[str]) -> dict[str, PointClaims]:
        """Every point's claims, from one listing; the highest attempt's claim is read where it is unfinished."""
        found: dict[str, PointClaims] = {name: PointClaims() for name in names}
        markers: dict[tuple[str, int], str] = {}
        prefix = self.dir.rstrip("/") + "/"
        for path, _ in storage.walk_files(self.dir):
            rel = path[len(prefix):] if path.startswith(prefix) else ""
            point, _, leaf = rel.replace(os.sep, "/").rpartition("/")
            match = _NAME.match(leaf)
            if point not in found or not match:  # another grid's point, or a temporary file of a rewrite
                continue
            attempt = int(match.group(1))
            if match.group(2):
                markers[point, attempt] = match.group(2)
            else:
                found[point].attempt = max(found[point].attempt, attempt)
        for point, state in found.items():
            if not state.attempt:
                continue
            finished_ok = any(markers.get((point, n)) == "ok" for n in range(1, state.attempt + 1))
            state.outcome = "ok" if finished_ok else markers.get((point, state.attempt))  # one ok is enough
            if state.outcome is None:
                state.content = self.read(point, state.attempt)
        return found

    def read(self, point: str, attempt: int) -> dict[str, Any] | None:
        url = self._url(point, attempt)
        try:
            content = json.loads(storage.read_text(url))
        except (ValueError, FileNotFoundError):  # created but not yet written (a disk's O_EXCL), or gone
            self._unreadable_since.setdefault(url, time.monotonic())
            return None
        self._unreadable_since.pop(url, None)
        return content

    def is_stale(self, point: str, state: PointClaims, now: float | None = None) -> bool:
        """The highest attempt is unfinished and its owner let it go or stopped beating."""
        if state.outcome is not None or not state.attempt:
            return False
        if state.content is None:
            since = self._unreadable_since.get(self._url(point, state.attempt), time.monotonic())
            return time.monotonic() - since > self.stale_after
        if state.content.get("released"):
            return True
        return state.age(time.time() if now is None else now) > self.stale_after

    def try_claim(self, point: str, attempt: int) -> Claim | None:
        """Create attempt `attempt` of point; the Claim if this worker won it, None if another did."""
        now = time.time()
        content = {**self.owner, "point": point, "attempt": attempt, "claimed_at": now, "heartbeat_at": now,
                   "released": False}
        if not storage.create_exclusive(self._url(point, attempt), json.dumps(content)):
            return None
        return Claim(self, point, attempt, content)

    def outcome(self, point: str, attempt: int) -> dict[str, Any] | None:
        for status in ("ok", "failed"):
            url = self._url(point, attempt) + "." + status
            if storage.isfile(url):
                return json.loads(storage.read_text(url))
        return None

    def _url(self, point: str, attempt: int) -> str:
        return storage.join(self.dir, point, str(attempt))


class Claim:
    """One attempt this worker holds: beat while it trains, then finish (ok or failed) or release it."""

    def __init__(self, claims: Claims, point: str, attempt: int, content: dict[str, Any]):
        self.claims, self.point, self.attempt, self.content = claims, point, attempt, content
        self.url = claims._url(point, attempt)

    def lost(self) -> bool:
        """Another worker took the point over (it judged this claim stale)."""
        return storage.exists(self.claims._url(self.point, self.attempt + 1))

    def beat(self, **extra: Any) -> None:
        self.content = {**self.content, **extra, "heartbeat_at": time.time()}
        storage.write_text(self.url, json.dumps(self.content))

    def release(self) -> None:
        """Let another worker take the point over now, without waiting for the heartbeat to go stale."""
        self.beat(released=True)

    def finish(self, status: str, **extra: Any) -> None:
        """Record the attempt's outcome (status ok, or failed: ...); nobody runs the point again."""
        kind = "ok" if status == "ok" else "failed"
        storage.write_text(f"{self.url}.{kind}", json.dumps({**self.claims.owner, "status": status,
                                                              "at": time.time(), **extra}))

    def heartbeat(self, on_lost: Callable[[Claim], None], log: Callable[[str], None]) -> Heartbeat:
        return Heartbeat(self, on_lost, log)


class Heartbeat:
    """A background thread that rewrites the claim every heartbeat_interval while the point trains.

    Before each beat it checks that nobody took the point over; if someone did (this worker
    stalled for longer than stale_after), on_lost is called, which stops this worker. A beat
    that fails (storage unreachable) is logged and tried again at the next interval.
    """

    def __init__(self, claim: Claim, on_lost: Callable[[Claim], None], log: Callable[[str], None]):
        self.claim, self.on_lost, self.log = claim, on_lost, log
        self.interval = heartbeat_interval(claim.claims.stale_after)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pretrax-sweep-heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=storage.timeout_s() + 5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                if self.claim.lost():
                    self.on_lost(self.claim)
                    return
                self.claim.beat()
                if failing:
                    self.log(f"{self.claim.point}: heartbeat written again")
                failing = False
            except (PretraxError, OSError) as e:
                if not failing:
                    self.log(f"{self.claim.point}: heartbeat not written ({e}); retrying every {self.interval:g} s")
                failing = True
