"""The one way this package writes a file: whole or not at all.

A temporary file in the destination's folder is written, then renamed over the
destination, so a failed or interrupted write leaves no partial file behind. The
temporary file's name is fixed by the destination's (``.<name>.sknet.tmp<suffix>``), so
one left by a killed write is overwritten and removed by the next write to the same
destination; a lock on it keeps two concurrent writes to one destination apart.
"""
import errno
import os
from pathlib import Path

from .errors import CheckpointError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the fixed name still cleans up after a killed write
    fcntl = None


def temp_path(path):
    """The temporary file a write to ``path`` goes through (same suffix: MindSpore appends
    '.ckpt' to any name that lacks it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.sknet.tmp{path.suffix}")


def _refuse(path, err):
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file is larger than allowed", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}.get(err.errno)
    return CheckpointError(f"{path}: cannot write: {why or err.strerror or err}")


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"{path}: folder '{folder}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give a file name")
    tmp = temp_path(path)
    try:
        # Opened by name, not mkstemp: the file gets the mode a plain open() gives.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise _refuse(path, err) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CheckpointError(f"{path}: another process is writing it ({tmp.name} is locked)") from None
        try:
            os.ftruncate(fd, 0)  # what a killed write left
            write(str(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # MindSpore makes its files read-only
            os.replace(tmp, path)
        except BaseException as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(err, OSError):
                raise _refuse(path, err) from None
            raise
    finally:
        os.close(fd)
