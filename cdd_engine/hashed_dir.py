"""A directory whose manifest lists its files with their SHA-256: checkpoints and engines.

Both on-disk formats of the package are such a directory (docs/checkpoint_format.md,
docs/engine_format.md): a JSON manifest (``config.json`` / ``engine.json``) with a format name,
an integer ``format_version`` and a ``files`` table, and the files it lists. This module holds
what they share, once:

- hashing: :func:`sha256_file` (chunked: models are hundreds of MB), :func:`sha256_bytes`,
  :func:`file_record` (the engine's ``{"sha256": hex, "bytes": n}``) and :func:`digest_id` (the
  checkpoint's ``"sha256:<hex>"``); :func:`parse_record` reads either form;
- :func:`atomic_write`: temporary file beside the target, then rename (an interruption never
  leaves a half-written file under the final name);
- :func:`verify_files` / :func:`read_listed`: every listed file present, a regular file, of the
  recorded size and hash; a name that is not listed is refused (:func:`unlisted_files` finds
  files the manifest does not name);
- :class:`Migrations`: the upgrade path of a format. ``migrate(N -> N+1)`` functions registered
  per version are applied on read, in order, so an older directory loads as the current
  version; a newer one is refused with a message that says to upgrade.

Errors are raised as the caller's own exception type (``error=CheckpointError`` /
``EngineFormatError``) so each format keeps its documented error class. Only the standard
library is imported.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

HASH_CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above ~64 KiB, memory stays small
DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")

Error = Callable[[str], Exception]


class HashedDirError(ValueError):
    """Default error of this module when the caller names no format-specific one."""


# ----------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256": hex, "bytes": size}`` of one file (the engine format's record)."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def digest_id(hex_digest: str) -> str:
    """``"sha256:<hex>"`` (the checkpoint format's record)."""
    return DIGEST_PREFIX + hex_digest


def parse_record(record: Any) -> tuple[str, int | None] | None:
    """(hex digest, size or None) of a record in either form; None when it is neither."""
    if isinstance(record, str) and record.startswith(DIGEST_PREFIX):
        hexd, size = record[len(DIGEST_PREFIX):], None
    elif isinstance(record, dict) and isinstance(record.get("sha256"), str):
        hexd, size = record["sha256"], record.get("bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            return None
    else:
        return None
    if len(hexd) != 64 or not set(hexd) <= _HEX:
        return None
    return hexd, size


# ----------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # not tempfile.mkstemp: its files are 0600; these get 0666 less the umask, like any file
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- reading
def _safe_name(root: Path, name: Any, manifest: str, error: Error) -> Path:
    """root / name for a relative name that stays inside root (no "..", no absolute path)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise error(f"{root / manifest}: listed file name {name!r} is not a relative path inside the directory")
    return root / name


def _record(root: Path, files: Mapping[str, Any], name: str, manifest: str, error: Error) -> tuple[str, int | None]:
    if name not in files:
        raise error(f"{root}: {manifest} records no hash for {name} (an unlisted file is never read)")
    rec = parse_record(files[name])
    if rec is None:
        raise error(f"{root / manifest}: the record of {name} is not 'sha256:<hex>' or "
                    f"{{'sha256': hex, 'bytes': n}}: {files[name]!r}")
    return rec


def _check_stat(path: Path, size: int | None, manifest: str, error: Error) -> None:
    try:
        st = os.stat(path)
    except OSError:
        raise error(f"{path}: file listed in {manifest} is missing (incomplete directory: missing "
                    f"{path.name})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device read forever
        raise error(f"{path}: file listed in {manifest} is not a regular file")
    if size is not None and st.st_size != size:
        raise error(f"{path}: size {st.st_size} bytes, {manifest} records {size} (truncated or replaced)")


def _mismatch(path: Path, got: str, want: str, manifest: str) -> str:
    return (f"{path}: SHA-256 {got[:16]}... does not match {want[:16]}... recorded in {manifest}: "
            f"{path.name} is corrupt or was changed after it was written (or belongs to another directory)")


def read_listed(root: str | os.PathLike, files: Mapping[str, Any], name: str, *, manifest: str,
                error: Error = HashedDirError) -> bytes:
    """The bytes of one listed file, checked against its record before anyone parses them."""
    root = Path(root)
    path = _safe_name(root, name, manifest, error)
    hexd, size = _record(root, files, name, manifest, error)
    _check_stat(path, size, manifest, error)
    data = path.read_bytes()
    got = sha256_bytes(data)
    if got != hexd:
        raise error(_mismatch(path, got, hexd, manifest))
    return data


def verify_files(root: str | os.PathLike, files: Mapping[str, Any], *, manifest: str,
                 error: Error = HashedDirError, verify_hashes: bool = True,
                 names: Iterable[str] | None = None) -> None:
    """Check the listed files (all, or ``names``): present, regular, recorded size, recorded hash.

    ``verify_hashes=False`` checks presence and size only (a fast open of a trusted directory).
    """
    root = Path(root)
    for name in (files if names is None else names):
        path = _safe_name(root, name, manifest, error)
        hexd, size = _record(root, files, name, manifest, error)
        _check_stat(path, size, manifest, error)
        if verify_hashes:
            got = sha256_file(path)
            if got != hexd:
                raise error(_mismatch(path, got, hexd, manifest))


def unlisted_files(root: str | os.PathLike, files: Mapping[str, Any], *, manifest: str,
                   ignore: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Regular files under ``root`` (relative POSIX names) that neither the manifest itself nor its
    ``files`` table names, less those ``ignore`` accepts; sorted."""
    root = Path(root)
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            rel = (Path(dirpath) / n).relative_to(root).as_posix()
            if rel != manifest and rel not in files and not ignore(rel):
                out.append(rel)
    return sorted(out)


# ----------------------------------------------------------------------------- versions
class Migrations:
    """The upgrade path of one format: ``migrate(N -> N+1)`` functions applied on read.

    >>> m = Migrations("demo", current=2)
    >>> @m.register(1)
    ... def _v1_to_v2(doc):
    ...     return dict(doc, added=True)
    >>> m.upgrade({"format_version": 1}, what="x.json")
    {'format_version': 2, 'added': True}
    """

    def __init__(self, format_name: str, current: int, error: Error = HashedDirError) -> None:
        self.format_name = format_name
        self.current = int(current)
        self.error = error
        self._steps: dict[int, Callable[[dict], dict]] = {}

    def register(self, from_version: int) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
        """Decorator: ``fn(doc at from_version) -> doc at from_version + 1`` (may return a new dict)."""
        if isinstance(from_version, bool) or not isinstance(from_version, int) or not 1 <= from_version < self.current:
            raise ValueError(f"{self.format_name}: a migration starts at a version in [1, {self.current}), "
                             f"got {from_version!r}")
        if from_version in self._steps:
            raise ValueError(f"{self.format_name}: a migration from version {from_version} is already registered")

        def deco(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
            self._steps[from_version] = fn
            return fn
        return deco

    def readable(self) -> list[int]:
        """The versions :meth:`upgrade` accepts: the current one and every one with a path up to it."""
        out = [self.current]
        v = self.current - 1
        while v in self._steps:
            out.insert(0, v)
            v -= 1
        return out

    def upgrade(self, doc: dict, *, what: str, newer_hint: str = "it was written by a newer version: upgrade"
                ) -> dict:
        """``doc`` brought to the current version (its ``format_version`` updated); refuses a
        version that is not an integer, is newer than :attr:`current` or has no migration path."""
        version = doc.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int):  # true == 1 in Python
            raise self.error(f"{what}: format_version must be an integer, got {version!r}")
        if version > self.current:
            raise self.error(f"{what} has {self.format_name} format version {version}; this reader reads "
                             f"versions {self.readable()} ({newer_hint})")
        if version not in self.readable():
            raise self.error(f"{what} has {self.format_name} format version {version}; this reader reads "
                             f"versions {self.readable()} and has no migration from version {version}")
        while version < self.current:
            doc = self._steps[version](dict(doc))
            if not isinstance(doc, dict):
                raise TypeError(f"{self.format_name}: migration from version {version} returned "
                                f"{type(doc).__name__}, not a dict")
            version += 1
            doc["format_version"] = version
        return doc
