"""The one way this package writes a file: whole or not at all.

A temporary file in the destination's folder is written, then renamed over the
destination, so a failed or interrupted write leaves no partial file behind.
"""
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"{path}: folder '{folder}' does not exist")
    # Same suffix: MindSpore appends '.ckpt' to any name that lacks it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
