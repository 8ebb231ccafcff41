"""Run dirs are URLs: a local path or gs://bucket/path, read and written through this one layer.

Everything that touches a run dir, a sweep dir or a results file goes
through these functions, never through os.path or open() directly, so the
same code works on a laptop and on a pod writing to a bucket. Underneath is
etils epath (which Orbax uses too) with gcsfs for gs://; Orbax's arrays go
to GCS through tensorstore's own gcs driver.

Object storage is not a disk, and the differences are handled here:
  - there are no folders, only object names: makedirs is a no-op, a "folder"
    exists once an object is under it, and listings are asked afresh (gcsfs
    would otherwise serve a cached listing that other hosts have changed);
  - there is no append: write_text replaces the whole object (one object
    write is atomic on GCS, so no temporary name is needed there);
  - there is no rename: move() copies every object, then deletes the source;
  - create_exclusive() is create-if-absent (a generation precondition on
    GCS, O_EXCL on a disk): the primitive for claims and locks.
A scheme other than gs:// (s3://, hdfs://, ...) is refused with one line;
it never becomes a local folder named "s3:".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from pretrax.errors import ConfigError, StorageError, first_line

SUPPORTED_SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TIMEOUT_ENV = "PRETRAX_STORAGE_TIMEOUT"  # seconds pretrax waits for a bucket to answer before it gives up
DEFAULT_TIMEOUT_S = 60.0
T = TypeVar("T")


def scheme(url: str) -> str | None:
    """'gs' for gs://bucket/x, None for a local path."""
    match = _SCHEME.match(str(url))
    return match.group(1).lower() if match else None


def check_url(url: str, what: str = "run.dir") -> str:
    """The URL itself when pretrax can use it; else one ConfigError line naming what would be valid."""
    found = scheme(url)
    if found is not None and found not in SUPPORTED_SCHEMES:
        raise ConfigError(f"{what} {url!r}: the {found}:// scheme is not supported; give a local path or "
                          "gs://bucket/path (Google Cloud Storage)")
    if found == "gs" and not bucket_of(url):
        raise ConfigError(f"{what} {url!r} names no bucket; write gs://BUCKET/path")
    return str(url)


def is_remote(url: str) -> bool:
    return scheme(url) is not None


def bucket_of(url: str) -> str:
    return str(url).split("://", 1)[1].split("/", 1)[0]


def absolute(url: str) -> str:
    """A local path made absolute; a gs:// URL as it is (without a trailing slash)."""
    return str(url).rstrip("/") if is_remote(url) else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    if is_remote(url):
        return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(url, *parts)


def parent(url: str) -> str:
    if is_remote(url):
        return str(url).rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(url))


def basename(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1] if is_remote(url) else os.path.basename(url)


def _fs(url: str):
    """gcsfs's filesystem, the instance epath (and so Orbax) shares."""
    from etils.epath import backend

    try:
        return backend.fsspec_backend.fs(url)
    except ImportError:
        raise ConfigError(f"{url}: gs:// needs gcsfs; install pretrax with its gcs extra "
                          "(pip install -e '.[gcs]')") from None


def _fresh(url: str):
    """The filesystem with its cached listings around url dropped: another host may have changed them."""
    fs = _fs(url)
    fs.invalidate_cache(parent(url))
    fs.invalidate_cache(url)
    return fs


def _key(url: str) -> str:
    return str(url).split("://", 1)[1]


def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(url)
    return _remote(url, lambda: _fresh(url).exists(url) or bool(_ls(url)))


def isdir(url: str) -> bool:
    """A directory on disk; under a URL: some object has this prefix (folders are not objects)."""
    if not is_remote(url):
        return os.path.isdir(url)
    return _remote(url, lambda: bool(_ls(url)))


def isfile(url: str) -> bool:
    if not is_remote(url):
        return os.path.isfile(url)
    return _remote(url, lambda: _fresh(url).isfile(url))


def _ls(url: str) -> list[dict]:
    try:
        return _fs(url).ls(url, detail=True, refresh=True)
    except FileNotFoundError:
        return []


def listdir(url: str) -> list[str]:
    """Names directly under url (files and "folders"); empty when there is nothing there."""
    if not is_remote(url):
        return os.listdir(url) if os.path.isdir(url) else []
    prefix = _key(url).rstrip("/")
    entries = _remote(url, lambda: _ls(url))
    return sorted({e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["name"].rstrip("/") != prefix})


def makedirs(url: str) -> None:
    """Create a local directory (and parents); nothing to do under a URL."""
    if not is_remote(url):
        os.makedirs(url, exist_ok=True)


def read_bytes(url: str) -> bytes:
    if not is_remote(url):
        with open(url, "rb") as f:
            return f.read()
    return _remote(url, lambda: _fs(url).cat_file(url))


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    """Replace url's content whole: a temporary file and a rename on disk, one object write on GCS."""
    if is_remote(url):
        _remote(url, lambda: _fs(url).pipe_file(url, data))
        return
    directory = os.path.dirname(os.path.abspath(url))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(url)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, url)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def append_text(url: str, text: str) -> None:
    """Append on a disk; on GCS (no append) read and rewrite the object: for small side files only."""
    if not is_remote(url):
        with open(url, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return
    old = read_text(url) if isfile(url) else ""
    write_text(url, old + text)


def create_exclusive(url: str, text: str) -> bool:
    """Create url holding text if no such file or object exists; False if one does (someone else won).

    Atomic on a local disk (O_EXCL) and on GCS (an ifGenerationMatch=0 precondition),
    so of many hosts racing for the same name exactly one gets True.
    """
    data = text.encode("utf-8")
    if is_remote(url):
        def create() -> bool:
            try:
                _fs(url).pipe_file(url, data, mode="create")
                return True
            except FileExistsError:
                return False

        return _remote(url, create)
    os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
    try:
        fd = os.open(url, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def remove(url: str) -> None:
    """Delete a file or object (missing is fine)."""
    if not is_remote(url):
        if os.path.lexists(url):
            os.unlink(url)
        return
    def rm() -> None:
        try:
            _fs(url).rm_file(url)
        except FileNotFoundError:
            pass

    _remote(url, rm)


def rmtree(url: str) -> None:
    if not is_remote(url):
        shutil.rmtree(url, ignore_errors=True)
        return
    if isdir(url):
        _remote(url, lambda: _fs(url).rm(url, recursive=True))


def move(src: str, dst: str) -> None:
    """Move a file or directory tree; on GCS every object is copied, then the sources are deleted."""
    if not is_remote(src):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.move(src, dst)
        return
    gcsfs_log = logging.getLogger("gcsfs")
    level = gcsfs_log.level
    gcsfs_log.setLevel(logging.CRITICAL)  # it logs a traceback when the server has no moveTo, then copies
    try:
        _remote(src, lambda: _fs(src).mv(src, dst, recursive=True))
    finally:
        gcsfs_log.setLevel(level)


def walk_files(url: str) -> Iterator[tuple[str, int]]:
    """(path, size) of every file under url, at any depth."""
    if not is_remote(url):
        for directory, _, files in os.walk(url):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    yield path, os.path.getsize(path)
                except OSError:
                    pass
        return
    found = _remote(url, lambda: _fs(url).find(url.rstrip("/") + "/", detail=True, refresh=True))
    for key, info in sorted(found.items()):
        yield f"gs://{key}", int(info.get("size") or 0)


def cache_dir() -> str:
    """Where remote files read through a local path live (PRETRAX_CACHE_DIR, default ~/.cache/pretrax)."""
    return os.path.expanduser(os.environ.get("PRETRAX_CACHE_DIR", "~/.cache/pretrax"))


def local_mirror(url: str) -> tuple[str, int, int]:
    """A local directory holding every file under url, and how many files and bytes were copied now.

    For readers that take only local paths (ArrayRecord's C++ reader cannot open gs://).
    Files already mirrored with the same size are kept; each copy lands by an atomic
    rename, so hosts or processes mirroring at the same time never see half a file.
    """
    if not is_remote(url):
        return url, 0, 0
    copied = nbytes = 0
    for path, size in walk_files(url):
        if _mirror_one(path, size):
            copied, nbytes = copied + 1, nbytes + size
    return _cached_path(url), copied, nbytes


def local_file(url: str) -> str:
    """A local path for one file: url itself on a disk, else its copy in the cache (fetched when it changed size)."""
    if not is_remote(url):
        return url
    size = _remote(url, lambda: int(_fresh(url).info(url).get("size") or 0))
    _mirror_one(url, size)
    return _cached_path(url)


def _cached_path(url: str) -> str:
    return os.path.join(cache_dir(), scheme(url), *_key(url).rstrip("/").split("/"))


def _mirror_one(url: str, size: int) -> bool:
    target = _cached_path(url)
    if os.path.isfile(target) and os.path.getsize(target) == size:
        return False
    write_bytes(target, read_bytes(url))
    return True


def check_reachable(url: str, what: str = "run.dir") -> None:
    """For a gs:// URL: the bucket exists and answers, within the storage timeout; else one StorageError line.

    Called before anything is written, so a typo in a bucket name costs seconds, not a run.
    """
    check_url(url, what)
    if not is_remote(url):
        return
    bucket = bucket_of(url)
    try:
        found = _remote(url, lambda: _fs(url).exists(f"gs://{bucket}"))
    except StorageError:
        raise
    except Exception as e:  # credentials, HTTP errors: name them
        raise StorageError(f"{what} {url!r}: bucket gs://{bucket} cannot be used: {first_line(e)}") from None
    if not found:
        raise StorageError(f"{what} {url!r}: bucket gs://{bucket} does not exist (or these credentials cannot see "
                           "it); create it (gcloud storage buckets create gs://BUCKET) or give another bucket")


def check_writable_dir(url: str, what: str) -> None:
    """An output directory that can be made and written, checked before the work that fills it; writes nothing.

    Locally: the nearest existing ancestor must be a directory this user may write (a path under a
    file, or on a read-only filesystem, is refused); gs://: the bucket must answer.
    """
    check_reachable(url, what)
    if is_remote(url):
        return
    path = os.path.abspath(os.path.expanduser(url))
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"{what} {url!r} is a file; give a directory (new, or one to write into)")
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise StorageError(f"{what} {url!r} cannot be made: {ancestor!r} is a file; give a directory path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StorageError(f"{what} {url!r} cannot be written: {ancestor!r} is read-only for this user; "
                           "give a directory this user can write")


def timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _remote(url: str, call: Callable[[], T]) -> T:
    """Run one storage call with a bounded wait: a bucket that does not answer is one StorageError line.

    gcsfs retries a dead endpoint for minutes; the call runs in a daemon thread
    and is abandoned after the timeout (PRETRAX_STORAGE_TIMEOUT seconds).
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="pretrax-storage")
    thread.start()
    thread.join(timeout_s())
    if thread.is_alive():
        raise StorageError(f"gs://{bucket_of(url)} did not answer within {timeout_s():g} s (reaching {url}); check "
                           f"the network and credentials, or raise {TIMEOUT_ENV}")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]

