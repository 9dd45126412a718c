"""Atomic file writing: outputs appear whole or not at all, and are never overwritten unasked."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import TrihrgeInputError


def refuse_overwrite(path: str | Path, overwrite: bool) -> None:
    """Raise an actionable error if ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TrihrgeInputError(f"{path} already exists",
                                "choose another output (--out) or pass --overwrite to replace it")


def replace_folder(new: Path, dst: Path) -> None:
    """Move the folder ``new`` to ``dst``, replacing an existing ``dst``: the old one is moved
    aside first and put back if the move fails, so ``dst`` is always one whole folder."""
    if not dst.exists():
        os.replace(new, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a file was replaced by a folder
        old.unlink(missing_ok=True)


def recover_interrupted_swap(dst: str | Path) -> bool:
    """Undo a :func:`replace_folder` that was killed between its two renames: ``dst`` is gone
    and the previous folder waits beside it (``.<name>.old-*``): it is moved back. Older
    leftovers beside an existing ``dst`` are deleted. Returns whether a folder was restored."""
    dst = Path(dst)
    olds = sorted(dst.parent.glob(f".{dst.name}.old-*"), key=lambda p: p.stat().st_mtime)
    restored = False
    if olds and not dst.exists():
        os.replace(olds.pop(), dst)
        restored = True
    partials = [p for p in dst.parent.glob(f".{dst.name}.p*.partial")
                if not _process_alive(p.name[len(dst.name) + 3:].split(".", 1)[0])]
    for left in olds + partials:  # left by writers that were killed
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)
    return restored


def _process_alive(pid_text: str) -> bool:
    """Whether the process ``pid_text`` (this machine) still runs; True when unsure."""
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError, OSError):
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place atomically.

    Works for files and folders (a folder replaces the old one only once fully written).
    """
    path = Path(path)
    if path.parent.is_dir():
        recover_interrupted_swap(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.p{os.getpid()}.", suffix=".partial",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
