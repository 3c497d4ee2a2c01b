"""Replace an engine directory as one step: a build never destroys the engine that was there.

A build writes into a temporary sibling ``.<name>.cdd-build-<pid>-<token>`` (same parent, so
same file system and renames are atomic), verifies it, then swaps it into place:

- Linux: ``renameat2(RENAME_EXCHANGE)`` swaps the two directories in one system call, then the
  old engine (now under the temporary name) is deleted.
- elsewhere (or a file system without exchange): the old directory is renamed aside to
  ``.<name>.cdd-old-<pid>-<token>``, the new one renamed in, the aside one deleted.

What a crash (SIGKILL, power loss; an exception or Ctrl-C is cleaned up at once) leaves at each point:

1. while writing or verifying: ``<name>`` is the old engine, untouched; a stale temporary sibling.
2. exchange done, old copy not yet deleted: ``<name>`` is the new, verified engine; a stale sibling.
3. fallback only, between its two renames: ``<name>`` is missing and the old engine is the
   ``.cdd-old-`` sibling; the next build of ``<name>`` renames it back first (:func:`recover`).

Siblings whose process is gone are removed by the next build of the same target; siblings of a
live process (a concurrent build) are left alone and reported in the log.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from ..engine_format import FORMAT, MANIFEST

log = logging.getLogger("cdd_engine.build")
TEMP_TAG = "cdd-build"
ASIDE_TAG = "cdd-old"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _sibling_pattern(out: Path, tag: str) -> re.Pattern[str]:
    return re.compile(re.escape(f".{out.name}.{tag}-") + r"(\d+)-[0-9a-f]{12}")


def _sibling_name(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(6)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process: perhaps another thread's build of the same target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _manifest_files(path: Path) -> set[str] | None:
    """The files an engine directory's engine.json lists, or None when it is not an engine."""
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return None
    files = m.get("files")
    return {str(k) for k in files} if isinstance(files, dict) else set()


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an engine directory (or an empty one) unless ``overwrite``.

    An engine directory holding files its engine.json does not list (the user's, or another
    build's) counts as not an engine: replacing it would delete them.
    """
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise FileExistsError(f"engine output {out} exists and is not a directory; choose another path")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or overwrite:
        return
    listed = _manifest_files(out)
    if listed is None:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(f"engine output {out} is a non-empty directory that is not a cdd-engine engine "
                              f"(it holds {shown}); building there would replace it: choose an empty or new "
                              f"directory, or pass overwrite=True (--force)")
    foreign = [e for e in entries if e != MANIFEST and e not in listed]
    if foreign:
        raise FileExistsError(f"engine directory {out} holds files its engine.json does not list "
                              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); a rebuild "
                              f"replaces the whole directory: move them away or pass overwrite=True (--force)")


def recover(out: Path) -> None:
    """Undo what a killed build of ``out`` left: put an old engine renamed aside back in place
    when ``out`` is missing, and delete temporary siblings whose build process is gone."""
    parent = out.parent
    if not parent.is_dir():
        return
    patterns = {tag: _sibling_pattern(out, tag) for tag in (TEMP_TAG, ASIDE_TAG)}
    found: list[tuple[str, Path, int]] = []
    for entry in parent.iterdir():
        for tag, pat in patterns.items():
            m = pat.fullmatch(entry.name)
            if m:
                found.append((tag, entry, int(m.group(1))))
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # removed meanwhile (a concurrent build cleaning up)
            return 0.0
    for tag, path, pid in sorted(found, key=lambda f: mtime(f[1]), reverse=True):  # newest aside first
        if _pid_alive(pid):
            log.warning("%s: left alone, it belongs to a build still running (pid %d)", path, pid)
            continue
        if tag == ASIDE_TAG and not os.path.lexists(out) and _manifest_files(path) is not None:
            os.rename(path, out)
            log.warning("%s: restored the previous engine that an interrupted build had moved aside", out)
            continue
        log.warning("%s: removing what an interrupted build (pid %d) left", path, pid)
        discard(path)


def new_temp_dir(out: Path) -> Path:
    """An empty directory beside ``out``, with ``out``'s permissions (or the umask's default)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _sibling_name(out, TEMP_TAG)
        try:
            os.mkdir(tmp, 0o777)  # the umask applies, unlike tempfile.mkdtemp's 0700
            break
        except FileExistsError:
            continue
    with contextlib.suppress(OSError):
        if out.is_dir():
            os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))
    return tmp


def discard(path: Path) -> None:
    """Delete a temporary or aside directory (errors are logged, never raised: the engine is safe)."""
    def warn(_fn, p, exc_info):
        log.warning("could not remove %s: %s", p, exc_info[1])
    if os.path.lexists(path):
        shutil.rmtree(path, onerror=warn)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False when not supported here."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Make the finished directory ``tmp`` be ``out``; the previous ``out`` (if any) is deleted.
    At no moment does ``out`` hold a mix of both, and after any failure it holds one of them."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        discard(tmp)  # now the old engine
        return
    aside = _sibling_name(out, ASIDE_TAG)
    os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        if not os.path.lexists(out):
            os.rename(aside, out)
        raise
    discard(aside)
