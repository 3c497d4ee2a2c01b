"""Files the ``cdd-engine`` commands write: nothing a user owns is overwritten by surprise.

Every report file a user names (``--json FILE``, ``--md FILE``) is checked with
:func:`check_output` before any work starts:

- an input of the command (an image being scored) is never written to, even with ``--force``;
- a JSON report never goes to a file named like an image (``--json a.png`` is a typo, not a wish);
- an existing file (a report this command wrote before included) is overwritten only with
  ``--force``. (Overlay folders follow the same rule in :mod:`cdd_engine.visualize`.)

``--json -`` writes the report to stdout; ``cli.main`` then sends the human-readable lines to
stderr so stdout stays valid JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

STDOUT = "-"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike | None, option: str, force: bool,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse (FileExistsError / ValueError) a report file that would overwrite something; see the
    module doc. ``option`` names the flag in the message (e.g. "--json")."""
    if path is None or str(path) == STDOUT:
        return
    p = Path(path).expanduser()
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{option} {path}: a report is not written to an image file name; "
                         f"give a .json/.md name (or {option} - for stdout)")
    if any(_same_file(p, Path(i)) for i in inputs):
        raise FileExistsError(f"{option} {path} is one of this command's inputs; it is never overwritten")
    if p.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
    if p.exists() and not force:
        raise FileExistsError(f"{option} {path} already exists; pass --force to overwrite it "
                              f"(or choose another name)")


def write_json(path: str | os.PathLike, obj: Any, stream=None) -> None:
    """Write ``obj`` as indented JSON to ``path``, or to ``stream`` (default stdout) when path is "-"."""
    text = json.dumps(obj, indent=2) + "\n"
    if str(path) == STDOUT:
        (stream or sys.stdout).write(text)
        (stream or sys.stdout).flush()
        return
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def force_help(what: str = "--json") -> str:
    return (f"overwrite an existing {what} file (a report this command wrote before included); "
            "inputs are never overwritten")
