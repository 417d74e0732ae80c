"""Writing files and folders so that a reader sees the old version or the whole new one, never a part.

Every file the project writes (checkpoints, shards, indexes, pictures, videos, exported weights) goes
through :func:`atomic_file` or :func:`atomic_directory`: written under a hidden temporary name beside the
target, flushed to disk, given the permissions of a normally created file, and renamed into place. A kill
leaves at most a temporary ``.NAME.tmp-…`` behind, which :func:`is_temporary` recognises for clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from rcm_registry.errors import CheckpointError

#: Marks a temporary name: ``.NAME.tmp-PID-RANDOM[.SUFFIX]``.
TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process and call, ending in ``path``'s suffix (writers
    such as PIL and imageio choose the format by it)."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.stem}{TMP_MARK}{tag}{path.suffix}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary name of :func:`temporary_name` (left behind by a kill)."""
    return path.name.startswith(".") and TMP_MARK in path.name


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename is durable only then); a no-op where folders cannot be opened."""
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


def _default_mode(path: Path) -> None:
    # Some writers (safetensors) create files readable by the owner only; outputs are shared, so follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def publish_file(tmp: Path, path: Path) -> None:
    """Flush ``tmp``, give it the default permissions and rename it over ``path``."""
    _default_mode(tmp)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; when the block ends without an error the
    file there replaces ``path`` (:func:`publish_file`), otherwise it is removed and ``path`` is untouched."""
    tmp = temporary_name(path)
    try:
        yield tmp
        publish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def publish_directory(tmp: Path, target: Path) -> None:
    """Flush every file under the folder ``tmp`` and rename it to ``target``; an existing ``target`` is moved
    aside first and deleted once the new one is in place."""
    for file in tmp.rglob("*"):
        if file.is_file():
            _default_mode(file)
            fsync_file(file)
    fsync_dir(tmp)
    old = None
    if target.exists():
        old = temporary_name(target.with_name(f"{target.name}.old"))
        target.rename(old)
    tmp.rename(target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; when the block ends without an error it replaces
    ``out`` (:func:`publish_directory`), otherwise it is removed with ``out`` untouched.

    Without ``overwrite``, an existing ``out`` is a :class:`CheckpointError`.
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    tmp.mkdir()
    try:
        yield tmp
        publish_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
