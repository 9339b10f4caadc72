"""Crash-safe file writing and careful JSON reading: the one place files are written atomically.

A reader never sees a half-written file: :func:`atomic_output` hands out a temporary file (or
folder) in the same folder; on success it is fsynced and replaces the target with
``os.replace`` (atomic on POSIX), and the folder is fsynced so the rename itself survives a
power cut. Any library can write the temporary path by name (a safetensors shard, a
checkpoint folder, a converted model). While in use a temporary file holds an exclusive
``flock``, so :func:`remove_orphan_temp_files` can tell the leftovers of a killed process
(lock free) from a write in progress in another process (locked) and delete only the former.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere orphans are recognised by name only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

TEMP_SUFFIX = ".tmp"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsyncs a folder (best effort: some file systems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsyncs a file, or every file and folder below a folder (the folder last), so what was
    written there survives a power loss before anything that points at it is written."""
    path = Path(path)
    if path.is_file():
        _fsync_path(path)
        return
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        _fsync_path(f)
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(sub)
    fsync_dir(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; write a file there (or, with ``directory``, fill
    the folder it names). On success it is fsynced and renamed over ``path``; on an error it is
    removed and ``path`` keeps its old content. A folder replaces an old folder whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        tmp = Path(name)
    try:
        if fd is not None and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        fsync_tree(tmp)
        if directory and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
    fsync_dir(path.parent)


def move_files_into(src: str | os.PathLike, dst: str | os.PathLike, *, last: str | None = None) -> None:
    """Moves every file of folder ``src`` into ``dst`` (each rename atomic; other files in ``dst``
    stay), the file named ``last`` after all others, so its presence marks a complete set."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    for f in sorted(src.iterdir(), key=lambda f: (f.name == last, f.name)):
        os.replace(f, dst / f.name)
    fsync_dir(dst)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def is_temp_file(path: Path, targets: tuple[str, ...]) -> bool:
    """True for a temporary name :func:`atomic_output` (``.NAME.XXXX.tmp``), or an older
    hand-written writer (``.NAME.XXXX``), makes for a target whose name ends in ``targets``."""
    if not path.name.startswith("."):
        return False
    body = path.name[1:].removesuffix(TEMP_SUFFIX)
    head, _, rand = body.rpartition(".")
    return bool(head) and re.fullmatch(r"[A-Za-z0-9_]+", rand) is not None and head.endswith(targets)


def remove_orphan_temp_files(folder: str | os.PathLike, targets: tuple[str, ...]) -> list[Path]:
    """Deletes temporary files for targets ending in ``targets`` (e.g. ``(".hnsw",)``) that
    killed writers left in ``folder``; returns their paths. A temporary file another live
    process is still writing is locked and kept.
    """
    folder = Path(folder)
    removed = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not is_temp_file(p, targets) or not p.is_file():
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live writer holds it
            p.unlink(missing_ok=True)
            removed.append(p)
        finally:
            os.close(fd)
    return removed


def read_json(path: str | os.PathLike) -> Any:
    """Parses a UTF-8 JSON file; every failure is a ValueError that names the file.

    Covers what ``json.loads`` leaves raw: invalid UTF-8 (with the byte offset) and input
    nested so deeply that the parser would raise RecursionError.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to parse") from None
