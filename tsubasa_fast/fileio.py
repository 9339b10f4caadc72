"""Crash-safe file writing: the one place the project writes files and folders atomically.

A reader never sees a half-written file: data goes to a temporary file in the same folder,
is fsynced, and replaces the target with os.replace (atomic on POSIX); the folder is fsynced
so the rename itself survives a power cut. ``atomic_output`` does the same for anything a
library writes to a path (a safetensors shard, a checkpoint folder, a converted model).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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


def _fsync_tree(path: Path) -> None:
    for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.is_dir():
        fsync_dir(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; write a file there (or, with ``directory``, fill
    the folder it names). On success it is fsynced and renamed over ``path``; on an error it is
    removed and ``path`` keeps its old content. A folder replaces an old folder whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _fsync_tree(tmp)
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
    fsync_dir(path.parent)


def move_files_into(src: str | os.PathLike, dst: str | os.PathLike, *, last: str | None = None) -> None:
    """Moves every file of folder ``src`` into ``dst`` (each rename atomic; other files in ``dst``
    stay), the file named ``last`` after all others, so its presence marks a complete set."""
    src, dst = Path(src), Path(dst)
    _fsync_tree(src)
    for f in sorted(src.iterdir(), key=lambda f: (f.name == last, f.name)):
        os.replace(f, dst / f.name)
    fsync_dir(dst)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())
