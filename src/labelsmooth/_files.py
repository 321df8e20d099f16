"""File writing shared by the study and the sweep: a file is replaced whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through ``path.tmp-<pid>`` then ``os.replace``: readers see the old or the new file, whole.

    ``write`` receives the open binary file. A process killed mid-write leaves only the temporary
    file, which the readers of the folder ignore (and remove).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "x.txt"
        >>> atomic_write(p, lambda f: f.write(b"done"))
        >>> p.read_text()
        'done'
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
