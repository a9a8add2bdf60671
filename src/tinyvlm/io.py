"""File helpers: atomic writes (temp file + rename) and JSON/JSONL reading with file:line errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tinyvlm.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it over `path` only on success.

    A crash mid-write leaves the previous file intact: readers see the old or the new file,
    never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); the result gets the usual mode, as if
        # written with open().
        if Path(tmp).exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    def write(f: IO[str]) -> None:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None


def read_jsonl(path: str | Path) -> list[Any]:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line, so later checks can name the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    rows = []
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"malformed JSON line: {e.msg}", path, lineno) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    return rows


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` at `target`; an existing `target` is moved aside first and removed
    only after the swap, so a complete copy exists at every moment."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target` that becomes `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
