"""File helpers: atomic writes (temp file + rename) and JSON/JSONL reading with file:line errors."""

from __future__ import annotations

import hashlib
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


def usual_mode(path: Path) -> None:
    """The mode open() would have given the file (0644 under umask 022): some writers
    (mkstemp, safetensors) create files private."""
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it over `path` only on success.

    A crash mid-write leaves the previous file intact: readers see the old or the new file,
    never half of one.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory; a file is needed here", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); the result gets the usual mode, as if
        # written with open().
        if Path(tmp).exists():
            usual_mode(Path(tmp))
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
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is accepted
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply to read", path) from None


def read_jsonl(path: str | Path) -> list[Any]:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line, so later checks can name the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    rows = []
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as f:  # a BOM is accepted
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"malformed JSON line: {e.msg}", path, lineno) from None
                except RecursionError:
                    raise InputError("JSON nested too deeply to read", path, lineno) from None
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
    # mkdtemp makes the directory private (0700); the result gets the usual mode.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CHECKSUMS = "checksums.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: str | Path) -> Path:
    """checksums.json: the SHA-256 of every file under `directory` (relative paths), written
    last, so a complete directory is one whose files all match it."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and p != directory / CHECKSUMS)
    sums = {p.relative_to(directory).as_posix(): file_sha256(p) for p in files}
    write_json(directory / CHECKSUMS, {"sha256": sums})
    return directory / CHECKSUMS


def check_checksums(directory: str | Path) -> str | None:
    """None when `directory` matches its checksums.json (or has none, as older ones do);
    otherwise what is wrong, naming the file."""
    directory = Path(directory)
    manifest = directory / CHECKSUMS
    if not manifest.is_file():
        return None
    try:
        sums = json.loads(manifest.read_text())["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return f"{CHECKSUMS} is unreadable"
    for name, digest in sums.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum (the file is corrupt or was changed)"
    return None
