"""Tests for glassgpt.data.download against a local HTTP server that can be told to misbehave.

The server runs on 127.0.0.1 for the whole module; each test gets a clean slate of files, planned
misbehaviours and recorded requests through the `web` fixture. Nothing touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from glassgpt.data import download
from glassgpt.data.download import MIRROR_ENV, fetch, mirror, sha256_file
from glassgpt.errors import GlassError

DATA = os.urandom(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
RELPATH = "tiny/input.txt"


# --- the test server ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the server received."""

    path: str
    range: str | None
    user_agent: str | None


@dataclass
class WebState:
    """What the server serves, how it should misbehave next, and what it was asked for."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    plans: dict[str, deque[tuple]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def add(self, path: str, data: bytes, *plan: tuple) -> str:
        """Serve `data` at `path`; each request pops the next planned action (then behaves)."""
        self.files[path] = data
        self.plans[path] = deque(plan)
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path


class MisbehavingHandler(http.server.BaseHTTPRequestHandler):
    """Serves WebState files with Range support, unless the plan says to misbehave.

    Planned actions:
      ("status", code)        reply with that HTTP error status
      ("truncate", n)         declare the full Content-Length, send n bytes, hang up
      ("stall", n, seconds)   declare the full Content-Length, send n bytes, then go silent
      ("ignore_range",)       answer 200 with the whole file even when a Range was asked for
      ("body", other_bytes)   serve these bytes instead of the real file
    """

    server: StateServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.server.state
        path = urllib.parse.unquote(self.path)
        state.requests.append(Seen(path, self.headers.get("Range"), self.headers.get("User-Agent")))
        if path not in state.files:
            self.send_error(404)
            return
        plan = state.plans[path]
        action = plan.popleft() if plan else ("serve",)
        body = state.files[path]
        kind = action[0]
        if kind == "status":
            self.send_error(action[1])
        elif kind == "truncate":
            self._send_whole(body, limit=action[1])
        elif kind == "stall":
            self._send_whole(body, limit=action[1])
            time.sleep(action[2])
        elif kind == "ignore_range":
            self._send_whole(body)
        elif kind == "body":
            self._send_range(action[1])
        else:
            self._send_range(body)

    def _send_whole(self, body: bytes, limit: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:limit] if limit is not None else body)
        self.wfile.flush()

    def _send_range(self, body: bytes) -> None:
        asked = self.headers.get("Range")
        if not asked:
            self._send_whole(body)
            return
        start = int(asked.removeprefix("bytes=").split("-")[0])
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])


class StateServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: WebState

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on a stalled response are expected here


@pytest.fixture(scope="module")
def server() -> Iterator[StateServer]:
    httpd = StateServer(("127.0.0.1", 0), MisbehavingHandler)
    httpd.state = WebState(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def web(server: StateServer) -> WebState:
    server.state = WebState(base=server.state.base)
    return server.state


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache root, and no mirror unless a test sets one."""
    monkeypatch.setenv("GLASSGPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return tmp_path / "home"


def cache_path(home: Path, relpath: str = RELPATH) -> Path:
    return home / "data" / relpath


def closed_port_url(path: str = "/tiny/input.txt") -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def error_message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's text, after checking it is a GlassError that fits on one line."""
    assert type(excinfo.value) is GlassError
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --- downloads ---------------------------------------------------------------------------------


def test_download_verifies_checksum_and_caches_file(web: WebState, home: Path) -> None:
    url = web.add("/tiny/input.txt", DATA)

    path = fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert path == cache_path(home)
    assert path.read_bytes() == DATA
    assert not path.with_name("input.txt.part").exists()
    assert web.requests[0].range is None
    assert web.requests[0].user_agent.startswith("glassgpt/")


def test_interrupted_download_keeps_part_and_resumes_with_range_request(
    web: WebState, home: Path
) -> None:
    url = web.add("/tiny/input.txt", DATA, ("truncate", 100_000))
    part = cache_path(home).with_name("input.txt.part")

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, url, DATA_SHA, show_progress=False)
    message = error_message(excinfo)
    assert "interrupted" in message and "again" in message and RELPATH in message
    assert part.read_bytes() == DATA[:100_000]
    assert not cache_path(home).exists()

    path = fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert [seen.range for seen in web.requests] == [None, "bytes=100000-"]
    assert path.read_bytes() == DATA
    assert not part.exists()


def test_stalled_connection_times_out_and_keeps_part(
    web: WebState, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "TIMEOUT_SECONDS", 0.3)
    url = web.add("/tiny/input.txt", DATA, ("stall", 50_000, 1.0))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert "interrupted" in error_message(excinfo)
    assert cache_path(home).with_name("input.txt.part").read_bytes() == DATA[:50_000]


def test_server_ignoring_range_restarts_from_scratch(web: WebState, home: Path) -> None:
    url = web.add("/tiny/input.txt", DATA, ("ignore_range",))
    part = cache_path(home).with_name("input.txt.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"bytes that must not end up in the file")

    path = fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert web.requests[0].range == f"bytes={len(b'bytes that must not end up in the file')}-"
    assert path.read_bytes() == DATA
    assert not part.exists()


def test_complete_part_is_verified_when_server_says_range_not_satisfiable(
    web: WebState, home: Path
) -> None:
    url = web.add("/tiny/input.txt", DATA)
    part = cache_path(home).with_name("input.txt.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA)

    path = fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert [seen.range for seen in web.requests] == [f"bytes={len(DATA)}-"]
    assert path.read_bytes() == DATA
    assert not part.exists()


def test_stale_part_longer_than_file_is_downloaded_again_when_no_checksum_is_known(
    web: WebState, home: Path
) -> None:
    url = web.add("/tiny/input.txt", DATA)
    part = cache_path(home).with_name("input.txt.part")
    part.parent.mkdir(parents=True)
    stale = DATA + b"left over from an older, longer version"
    part.write_bytes(stale)

    path = fetch(RELPATH, url, show_progress=False)

    assert [seen.range for seen in web.requests] == [f"bytes={len(stale)}-", None]
    assert path.read_bytes() == DATA


def test_checksum_mismatch_discards_file_and_caches_nothing(web: WebState, home: Path) -> None:
    url = web.add("/tiny/input.txt", DATA, ("body", b"not the file you are looking for"))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, url, DATA_SHA, show_progress=False)

    message = error_message(excinfo)
    assert "checksum mismatch" in message and RELPATH in message
    assert DATA_SHA in message
    assert hashlib.sha256(b"not the file you are looking for").hexdigest() in message
    assert not cache_path(home).exists()
    assert not cache_path(home).with_name("input.txt.part").exists()


def test_download_without_checksum_is_cached_as_is(web: WebState, home: Path) -> None:
    url = web.add("/tiny/input.txt", DATA)

    assert fetch(RELPATH, url, show_progress=False).read_bytes() == DATA


def test_dest_overrides_the_cache_location(web: WebState, tmp_path: Path) -> None:
    url = web.add("/tiny/input.txt", DATA)
    dest = tmp_path / "elsewhere" / "copy.txt"

    assert fetch(RELPATH, url, DATA_SHA, dest=dest, show_progress=False) == dest
    assert dest.read_bytes() == DATA


def test_cached_file_is_returned_without_network(home: Path) -> None:
    cached = cache_path(home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(DATA)

    assert fetch(RELPATH, closed_port_url(), DATA_SHA, show_progress=False) == cached


# --- errors ------------------------------------------------------------------------------------


def test_http_404_is_a_clear_error(web: WebState, home: Path) -> None:
    url = web.url("/tiny/missing.txt")

    with pytest.raises(GlassError) as excinfo:
        fetch("tiny/missing.txt", url, show_progress=False)

    message = error_message(excinfo)
    assert "not found (HTTP 404)" in message and url in message
    assert not cache_path(home, "tiny/missing.txt").exists()
    assert not cache_path(home, "tiny/missing.txt.part").exists()


def test_http_500_is_a_clear_error(web: WebState) -> None:
    url = web.add("/tiny/input.txt", DATA, ("status", 500))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, url, show_progress=False)

    message = error_message(excinfo)
    assert "HTTP 500" in message and url in message and "try again later" in message


def test_no_network_error_names_the_mirror_variable() -> None:
    url = closed_port_url()

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, url, show_progress=False)

    message = error_message(excinfo)
    host = urllib.parse.urlparse(url).netloc
    assert f"no network connection to {host}" in message
    assert MIRROR_ENV in message and "base URL" in message


# --- the mirror --------------------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True], ids=["plain-path", "file-url"])
def test_local_mirror_directory_stands_in_for_the_public_host(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, as_url: bool
) -> None:
    folder = tmp_path / "mirror"
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "input.txt").write_bytes(DATA)
    monkeypatch.setenv(MIRROR_ENV, folder.as_uri() if as_url else str(folder))

    path = fetch(RELPATH, closed_port_url(), DATA_SHA, show_progress=False)

    assert path == cache_path(home)
    assert path.read_bytes() == DATA


def test_local_mirror_with_wrong_bytes_is_a_checksum_mismatch(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mirror"
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "input.txt").write_bytes(b"corrupt")
    monkeypatch.setenv(MIRROR_ENV, str(folder))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, closed_port_url(), DATA_SHA, show_progress=False)

    assert "checksum mismatch for tiny/input.txt" in error_message(excinfo)
    assert not cache_path(home).exists()
    assert not cache_path(home).with_name("input.txt.part").exists()


def test_http_mirror_base_url_is_used_instead_of_public_url(
    web: WebState, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web.add("/mirror/tiny/input.txt", DATA)
    monkeypatch.setenv(MIRROR_ENV, web.url("/mirror/"))  # trailing slash: still one slash

    path = fetch(RELPATH, closed_port_url(), DATA_SHA, show_progress=False)

    assert [seen.path for seen in web.requests] == ["/mirror/tiny/input.txt"]
    assert path.read_bytes() == DATA


def test_missing_file_in_mirror_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv(MIRROR_ENV, str(folder))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, closed_port_url(), show_progress=False)

    message = error_message(excinfo)
    assert str(folder / "tiny" / "input.txt") in message and MIRROR_ENV in message


def test_mirror_folder_that_does_not_exist_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))

    with pytest.raises(GlassError) as excinfo:
        fetch(RELPATH, closed_port_url(), show_progress=False)

    message = error_message(excinfo)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert MIRROR_ENV in message


def test_mirror_is_none_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mirror() is None
    monkeypatch.setenv(MIRROR_ENV, "")
    assert mirror() is None
    monkeypatch.setenv(MIRROR_ENV, "/srv/glassgpt-data")
    assert mirror() == "/srv/glassgpt-data"


# --- progress and helpers ------------------------------------------------------------------------


def test_progress_is_two_lines_on_stderr_when_not_a_terminal(
    web: WebState, capsys: pytest.CaptureFixture[str]
) -> None:
    url = web.add("/tiny/input.txt", DATA)

    fetch(RELPATH, url, DATA_SHA)

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"downloading {RELPATH} from {url}", f"downloaded {RELPATH} (300.0 kB)"]


def test_progress_bar_on_a_terminal_goes_to_stderr(
    web: WebState, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "_stderr_is_terminal", lambda: True)
    url = web.add("/tiny/input.txt", DATA)

    assert fetch(RELPATH, url, DATA_SHA).read_bytes() == DATA
    assert capsys.readouterr().out == ""


def test_no_progress_output_when_disabled(
    web: WebState, capsys: pytest.CaptureFixture[str]
) -> None:
    url = web.add("/tiny/input.txt", DATA)

    fetch(RELPATH, url, DATA_SHA, show_progress=False)

    assert capsys.readouterr() == ("", "")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(DATA)

    assert sha256_file(path) == DATA_SHA
