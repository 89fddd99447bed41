"""Fetch data files into the cache: resumable, atomic, checksum-verified, and mirror-aware.

Every corpus glassgpt trains on is one or more files under the data cache (`data_dir()`), e.g.
`tinyshakespeare/input.txt`. `fetch` returns the cached copy, downloading it first if needed.

- Downloads stream into `<dest>.part` beside the destination and are renamed into place only once
  they are complete and (when a sha256 is known) verified, so the cache never holds half a file.
  That is also why a file already in the cache is trusted without hashing it again.
- An interrupted download keeps its `.part`; the next call resumes it with an HTTP Range request.
- `$GLASSGPT_DATA_MIRROR` stands in for the public hosts (offline machines, CI, a classroom's
  shared copy): either a folder laid out like the data cache, or a base URL that is.
- Whatever the network, a server or the mirror can get wrong becomes a one-line `GlassError` that
  says what happened and what to do about it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from rich.console import Console
from rich.filesize import decimal as human_size
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from glassgpt import __version__
from glassgpt.errors import GlassError
from glassgpt.paths import data_dir

MIRROR_ENV = "GLASSGPT_DATA_MIRROR"

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough to be fast, small enough for a smooth progress bar
TIMEOUT_SECONDS = 30.0  # per socket operation (connect, each read), not for the whole download
USER_AGENT = f"glassgpt/{__version__}"

_MIRROR_HINT = (
    f"set {MIRROR_ENV} to a local copy of the data (a folder laid out like the data cache) "
    "or a base URL"
)


# --- public API ------------------------------------------------------------------------------


def mirror() -> str | None:
    """The value of $GLASSGPT_DATA_MIRROR, or None when unset/empty."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return value or None


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks so large shards never sit in memory whole."""
    digest = hashlib.sha256()
    _hash_file_into(digest, Path(path))
    return digest.hexdigest()


def fetch(
    relpath: str,
    url: str,
    sha256: str | None = None,
    *,
    dest: Path | None = None,
    show_progress: bool = True,
) -> Path:
    """Return the local path of a data file, downloading it into the cache if needed.

    relpath: the file's path relative to the data root, e.g. "tinyshakespeare/input.txt" or
             "fineweb-edu/shard_00000.parquet". The cache location is data_dir() / relpath unless
             `dest` is given.
    url:     its canonical public URL (used when no mirror is set).
    sha256:  expected hex digest, or None when unknown.
    """
    parts = _relpath_parts(relpath)
    dest = Path(dest) if dest is not None else data_dir().joinpath(*parts)
    if dest.exists():
        # Only complete (and, where a digest is known, verified) files are ever renamed into place.
        return dest
    expected = sha256.strip().lower() if sha256 else None
    source = mirror()
    if source is None:
        _download(relpath, url, dest, expected, show_progress)
    elif _is_http_url(source):
        _download(relpath, _join_url(source, relpath), dest, expected, show_progress)
    else:
        _copy_from_mirror(relpath, _mirror_folder(source), dest, expected, show_progress)
    return dest


# --- paths and the mirror --------------------------------------------------------------------


def _relpath_parts(relpath: str) -> tuple[str, ...]:
    """Split a data-root-relative path; an absolute path or '..' is a bug in the caller."""
    path = PurePosixPath(relpath)
    if not relpath or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"relpath must be relative to the data root, got {relpath!r}")
    return path.parts


def _part_path(dest: Path) -> Path:
    """Where an unfinished download lives: same folder as `dest`, so os.replace is atomic."""
    return dest.with_name(dest.name + ".part")


def _ensure_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GlassError(f"cannot create folder {path.parent}: {error.strerror or error}") from None


def _is_http_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _join_url(base: str, relpath: str) -> str:
    """`<base>/<relpath>` with exactly one slash between them, and the path part URL-quoted."""
    return base.rstrip("/") + "/" + urllib.parse.quote(relpath.lstrip("/"))


def _mirror_folder(value: str) -> Path:
    """The local folder named by the mirror variable (a plain path or a file:// URL)."""
    if value.lower().startswith("file:"):
        parsed = urllib.parse.urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise GlassError(
                f"{MIRROR_ENV}={value} names a file:// URL on another host ({parsed.netloc}); "
                "use a local folder or an http(s):// base URL"
            )
        folder = Path(urllib.request.url2pathname(parsed.path))
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise GlassError(
            f"{MIRROR_ENV}={value} has an unsupported scheme; "
            "use a local folder, a file:// URL or an http(s):// base URL"
        )
    else:
        folder = Path(value).expanduser()
    if not folder.is_dir():
        raise GlassError(
            f"the data mirror folder {folder} does not exist; "
            f"point {MIRROR_ENV} at a local copy of the data (a folder laid out like the data "
            "cache) or a base URL, or unset it to download from the public hosts"
        )
    return folder


def _copy_from_mirror(
    relpath: str, folder: Path, dest: Path, expected: str | None, show_progress: bool
) -> None:
    """Copy `<folder>/<relpath>` into the cache the same way a download goes: .part, verify, rename."""
    source = folder.joinpath(*_relpath_parts(relpath))
    if not source.is_file():
        raise GlassError(
            f"{relpath} is not in the data mirror: looked for {source} "
            f"({MIRROR_ENV}={folder}); copy the file there, or unset {MIRROR_ENV} to download it"
        )
    part = _part_path(dest)
    _ensure_parent(dest)
    digest = hashlib.sha256()
    try:
        total = source.stat().st_size
        with (
            open(source, "rb") as src,
            open(part, "wb") as out,
            _Reporter(relpath, str(source), total, 0, show_progress, verb="copying") as report,
        ):
            while chunk := src.read(CHUNK_SIZE):
                out.write(chunk)
                digest.update(chunk)
                report.advance(len(chunk))
    except OSError as error:
        part.unlink(missing_ok=True)
        raise GlassError(f"cannot copy {source} to {part}: {error.strerror or error}") from None
    _finish(relpath, part, dest, expected, digest.hexdigest())


# --- downloading -----------------------------------------------------------------------------


class _RangeNotSatisfiable(Exception):
    """The server answered 416 to a resume request: our .part may already hold the whole file."""

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.total = total


def _download(
    relpath: str, url: str, dest: Path, expected: str | None, show_progress: bool
) -> None:
    """Download `url` to `dest` through `<dest>.part`, resuming a part left by an earlier try."""
    part = _part_path(dest)
    _ensure_parent(dest)
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(relpath, url, offset)
    except _RangeNotSatisfiable as reply:
        if expected is not None or reply.total == offset:
            actual = sha256_file(part) if expected is not None else ""
            _finish(relpath, part, dest, expected, actual)
            return
        # The part is longer than (or cannot be matched to) the file: it is stale, start over.
        part.unlink(missing_ok=True)
        offset = 0
        response = _open(relpath, url, offset)

    with response:
        length = _content_length(response)
        if response.status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise GlassError(
                    f"the server sent the wrong byte range when resuming {relpath} from {url}; "
                    "the partial file was discarded, run the command again to start over"
                )
            if total is None and length is not None:
                total = offset + length
            digest = hashlib.sha256()
            _hash_file_into(digest, part)
            mode = "ab"
        else:
            # A 200 means the server ignored our Range header (or there was none): start over.
            offset, total, digest, mode = 0, length, hashlib.sha256(), "wb"

        with (
            _open_part(part, mode) as out,
            _Reporter(relpath, url, total, offset, show_progress) as report,
        ):
            received = _stream(response, out, digest, report, relpath, url)
            if length is not None and received < length:
                raise _interrupted(relpath, url, f"got {received} of {length} bytes")
    _finish(relpath, part, dest, expected, digest.hexdigest())


def _open(relpath: str, url: str, offset: int) -> http.client.HTTPResponse:
    """Send the GET (with a Range header when resuming) and turn failures into GlassErrors."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable(_parse_unsatisfied_range(error.headers.get("Content-Range")))
        raise _http_error(relpath, url, error.code, error.reason) from None
    except urllib.error.URLError as error:
        raise _no_network(relpath, url, error.reason) from None
    except (http.client.HTTPException, OSError) as error:
        # Connected, but the server hung up or stalled before answering.
        raise GlassError(
            f"the connection to {_host(url)} failed while downloading {relpath} "
            f"({_describe(error)}); try again later, or {_MIRROR_HINT}"
        ) from None
    except ValueError as error:
        raise GlassError(f"cannot download {relpath}: invalid URL {url!r} ({error})") from None


def _stream(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    digest: hashlib._Hash,
    report: _Reporter,
    relpath: str,
    url: str,
) -> int:
    """Copy the response body to `out` chunk by chunk, hashing as it goes; return bytes received.

    A dropped connection raises a GlassError but leaves what was written in the .part file, so the
    next attempt resumes from there. `read1` returns whatever has arrived (up to CHUNK_SIZE) instead
    of waiting for a full chunk, so a stall or timeout loses nothing already received. Note that
    http.client returns a short body (rather than raising) when the server closes early, which is
    why the caller compares against Content-Length.
    """
    read = getattr(response, "read1", response.read)
    received = 0
    while True:
        try:
            chunk = read(CHUNK_SIZE)
        except (http.client.HTTPException, OSError) as error:
            raise _interrupted(relpath, url, _describe(error)) from None
        if not chunk:
            return received
        try:
            out.write(chunk)
        except OSError as error:
            raise GlassError(
                f"cannot write {out.name}: {error.strerror or error} (is the disk full?)"
            ) from None
        digest.update(chunk)
        received += len(chunk)
        report.advance(len(chunk))


def _open_part(part: Path, mode: str) -> BinaryIO:
    try:
        return open(part, mode)
    except OSError as error:
        raise GlassError(f"cannot write {part}: {error.strerror or error}") from None


def _finish(relpath: str, part: Path, dest: Path, expected: str | None, actual: str) -> None:
    """Verify the complete .part against `expected` and rename it into place, or discard it."""
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise GlassError(
            f"checksum mismatch for {relpath}: expected sha256 {expected}, got {actual}; "
            "the file was discarded, try again or check the mirror"
        )
    try:
        os.replace(part, dest)
    except OSError as error:
        raise GlassError(f"cannot move {part} to {dest}: {error.strerror or error}") from None


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    try:
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK_SIZE):
                digest.update(chunk)
    except OSError as error:
        raise GlassError(f"cannot read {path}: {error.strerror or error}") from None


# --- HTTP header parsing -----------------------------------------------------------------------


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-999/1000` -> (100, 1000); the total may be `*` (unknown) -> None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return int(start), (None if total == "*" else int(total))


def _parse_unsatisfied_range(value: str | None) -> int | None:
    """`bytes */1000` (sent with a 416) -> 1000, the full size of the file on the server."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(match.group(1)) if match else None


# --- error messages ----------------------------------------------------------------------------


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url


def _describe(error: object) -> str:
    """A one-line description of an exception or URLError reason."""
    if isinstance(error, TimeoutError):
        return f"timed out after {TIMEOUT_SECONDS:g} s"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed after {len(error.partial)} more bytes"
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def _http_error(relpath: str, url: str, code: int, reason: object) -> GlassError:
    if code == 404:
        where = (
            f"check that the mirror in {MIRROR_ENV} holds {relpath}"
            if mirror()
            else f"the file may have moved; {_MIRROR_HINT} that has it"
        )
        return GlassError(f"{relpath} not found (HTTP 404) at {url}; {where}")
    status = " ".join(f"HTTP {code} {reason or ''}".split())
    return GlassError(
        f"download of {relpath} failed with {status} at {url}; try again later, or {_MIRROR_HINT}"
    )


def _no_network(relpath: str, url: str, reason: object) -> GlassError:
    if isinstance(reason, ssl.SSLError):
        return GlassError(
            f"secure connection to {_host(url)} failed while downloading {relpath} "
            f"({_describe(reason)}); check the system clock and CA certificates, or {_MIRROR_HINT}"
        )
    return GlassError(
        f"no network connection to {_host(url)} while downloading {relpath} "
        f"({_describe(reason)}); connect to the internet, or {_MIRROR_HINT}"
    )


def _interrupted(relpath: str, url: str, detail: str) -> GlassError:
    return GlassError(
        f"download of {relpath} from {url} was interrupted ({detail}); the partial file was kept, "
        "run the command again to resume it"
    )


# --- progress ----------------------------------------------------------------------------------


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _Reporter:
    """Progress on stderr: a rich bar on a terminal, a start and an end line otherwise.

    The end line is printed only when the transfer finished (not when it raised).
    """

    def __init__(
        self,
        relpath: str,
        source: str,
        total: int | None,
        done: int,
        enabled: bool,
        *,
        verb: str = "downloading",
    ) -> None:
        self.relpath, self.source, self.total, self.done = relpath, source, total, done
        self.enabled, self.verb = enabled, verb
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> _Reporter:
        if not self.enabled:
            return self
        if _stderr_is_terminal():
            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.relpath, total=self.total, completed=self.done)
        else:
            resuming = f" (resuming after {human_size(self.done)})" if self.done else ""
            _say(f"{self.verb} {self.relpath} from {self.source}{resuming}")
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and kind is None:
            done = "copied" if self.verb == "copying" else "downloaded"
            _say(f"{done} {self.relpath} ({human_size(self.done)})")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
