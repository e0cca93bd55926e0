"""Atomic file writes, shared by every module that writes files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], object]) -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` fills a temporary file, which then replaces ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder must exist.
    writer : callable
        Called with the temporary file's path (a ``str`` in the destination folder, already created
        and empty); it must write the whole content there. If it raises, the temporary file is
        removed, ``path`` is left untouched and the error propagates.

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it before writing {path.name}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
