"""Files an export writes: whole or not at all (a temporary file in the same folder, renamed),
and never over an existing file unless asked."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nerfx.export.density import ExportError


def check_output(path: Path, suffixes: tuple[str, ...], force: bool) -> None:
    """Refuses a wrong extension, or an existing file without force, before any work."""
    if path.suffix.lower() not in suffixes:
        raise ExportError(f"{path}: the extension says the format; use one of "
                          f"{', '.join(suffixes)}")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise ExportError(f"{path} exists; pass --force to replace it")


def write_bytes(path: Path, data: bytes) -> Path:
    """Writes data to path atomically (the old file or the new one, never half of either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; readable as any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, value: dict) -> Path:
    return write_bytes(path, (json.dumps(value, indent=1) + "\n").encode())
