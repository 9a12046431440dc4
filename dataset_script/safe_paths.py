"""Paths from untrusted text (a record's `image_path`, an id put into `--image-path-template`, an archive member
name) resolved inside one root folder only.

A release's bytes end up in Parquet files that may be pushed to the Hub, so `../../home/user/.ssh/id_rsa.png`,
`/etc/passwd` or a symlink under `images/` pointing elsewhere must never be read: each is an `UnsafePathError`
naming the path and the reason.

    >>> inside_root("release", "images/a.png")            # release/images/a.png (if it stays inside)
    >>> safe_relative_path("../a.png", "image_path")      # UnsafePathError: '..' leaves the folder
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

# "C:/x", "C:x", "//server/share": absolute on Windows even where Python's posix paths call them relative.
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:|//|\\\\)")


class UnsafePathError(ValueError):
    """A path that would leave its root folder (absolute, `..`, a symlink pointing outside) or is not a path."""


def safe_relative_path(text, what: str = "path") -> PurePosixPath:
    """`text` as a relative POSIX path that stays below its folder: backslashes read as separators, `.` parts
    dropped; absolute paths, drive letters, `..` parts, empty paths and NUL bytes are refused."""
    if not isinstance(text, (str, PurePosixPath, Path)):
        raise UnsafePathError(f"{what} must be a text path, got {type(text).__name__}")
    raw = str(text)
    if "\x00" in raw:
        raise UnsafePathError(f"{what} {raw!r} contains a NUL byte")
    normalized = raw.replace("\\", "/")
    if normalized.startswith("/") or _WINDOWS_ABSOLUTE.match(raw) or _WINDOWS_ABSOLUTE.match(normalized):
        raise UnsafePathError(f"{what} {raw!r} is absolute: paths must be relative to the release folder")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{what} {raw!r} contains '..': paths must stay inside the release folder")
    if not parts:
        raise UnsafePathError(f"{what} {raw!r} is empty")
    return PurePosixPath(*parts)


def is_inside(path, root) -> bool:
    """Whether `path`, with every symlink followed, lies inside `root` (also with symlinks followed)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def inside_root(root, relative, what: str = "path") -> Path:
    """`root / relative` after `safe_relative_path`, refusing it when symlinks take it outside `root`. The file need
    not exist (an archive member about to be written is checked the same way)."""
    candidate = Path(root) / safe_relative_path(relative, what)
    if not is_inside(candidate, root):
        raise UnsafePathError(f"{what} {str(relative)!r} leads outside {root} through a symbolic link "
                              f"(to {Path(candidate).resolve()})")
    return candidate


__all__ = ["UnsafePathError", "inside_root", "is_inside", "safe_relative_path"]
