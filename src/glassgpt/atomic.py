"""Write files so that a reader (or a crash) never sees half of one: write a temp file, then rename.

`os.replace` is atomic on POSIX and Windows when source and target are on the same filesystem,
which is why the temp file is created in the target's own folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from glassgpt.errors import GlassError


def _ensure_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise GlassError(f"cannot write {path}: {blocker} is a file, not a folder") from None
    except OSError as error:
        raise GlassError(f"cannot create folder {path.parent}: {error.strerror or error}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, on failure delete it."""
    path = Path(path)
    _ensure_parent(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise GlassError(f"cannot write to {path.parent}: {error.strerror or error}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes the file private (0600); give it the usual permissions
            os.chmod(tmp, 0o666 & ~_umask())
        if path.is_dir():
            raise GlassError(f"cannot write {path}: it is a folder; give a file name")
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise GlassError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush_to_disk(folder: Path) -> None:
    """fsync every file in `folder`, then the folder: after this, a rename of the folder that
    survives a power cut finds the files' contents on disk, not empty files."""
    for entry in folder.iterdir():
        if entry.is_file():
            _fsync(entry)
    _fsync(folder)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` as a whole.

    durable: the files reach the disk before the rename, and the rename before returning
    (~5 ms per file): for what would cost compute to redo, like a checkpoint. Without it a kill
    is still safe; a power cut may keep the rename and lose the files' contents."""
    path = Path(path)
    _ensure_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private (0700)
    except OSError as error:
        raise GlassError(f"cannot write to {path.parent}: {error.strerror or error}") from None
    try:
        yield tmp
        for entry in tmp.iterdir():  # some writers (safetensors) make their files private (0600)
            if entry.is_file():
                os.chmod(entry, 0o666 & ~_umask())
        if durable:
            _flush_to_disk(tmp)
        if path.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first, so
            # there is never a moment without a complete copy on disk.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
