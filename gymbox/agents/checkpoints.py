"""Crash-safe checkpoints: a run directory holds complete checkpoints, never a torn one.

A checkpoint ``checkpoints/step-N`` is written into a hidden temporary directory next to it
(``.step-N.tmp-PID``): every file is written and fsynced, then ``manifest.json`` (each file's
size and SHA-256) is, then the directory is renamed to ``step-N`` and the parent fsynced. A
rename is atomic, so whatever kills the process (SIGKILL, power loss after the fsyncs), the
checkpoints directory holds the previous complete checkpoints and at most a temporary
directory, which :func:`latest_checkpoint` ignores and :func:`remove_partial` deletes.

:func:`latest_checkpoint` picks the newest ``step-N`` whose manifest verifies; one that does not
(a copy damaged later, or a checkpoint from before manifests) is skipped and reported.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_directory(root / "step-1") as tmp:
    ...     _ = (tmp / "weights.bin").write_bytes(b"0123")
    >>> found = latest_checkpoint(root)
    >>> found.path.name, found.skipped
    ('step-1', ())
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """A temporary directory to fill; on a clean exit it becomes ``final`` atomically, with a
    manifest. An existing ``final`` is replaced (the new one is complete before the old one
    goes). On an exception the temporary directory is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST)
        for path in files:
            _fsync(path)
        manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        _fsync(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify(directory: str | Path) -> str | None:
    """None when ``directory``'s manifest matches its files, else what is wrong."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest.json (not written by an atomic save)"
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable manifest: {exc}"
    for name, entry in manifest.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _digest(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


@dataclass(frozen=True)
class Found:
    """The newest complete checkpoint, and the newer ones skipped (path, why).

    Attributes:
        path: the checkpoint directory, or None if there is none.
        skipped: newer ``step-N`` directories that did not verify, with the reason.
    """

    path: Path | None
    skipped: tuple[tuple[Path, str], ...] = ()


def _step(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def latest_checkpoint(directory: str | Path) -> Found:
    """The newest ``step-N`` under ``directory`` that verifies (temporary ones never count)."""
    directory = Path(directory)
    candidates = sorted((p for p in directory.glob("step-*") if p.is_dir() and _step(p) >= 0),
                        key=_step, reverse=True)
    skipped = []
    for path in candidates:
        problem = verify(path)
        if problem is None:
            return Found(path, tuple(skipped))
        skipped.append((path, problem))
    return Found(None, tuple(skipped))


def remove_partial(directory: str | Path) -> list[Path]:
    """Delete the temporary directories that a killed save left; returns them."""
    directory = Path(directory)
    partial = [p for p in directory.glob(".step-*") if p.is_dir()]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial
