"""Atomic file writes: a temporary file in the target's folder, flushed to disk, then
renamed over the final name, then the folder flushed, so that neither a killed process
nor a power cut leaves a partial file under the final name.

Temporary files are named ``.<final name>.<random>.tmp``; a process killed with
SIGKILL in the middle of a write leaves one behind (see :func:`stale_temp_files`).
"""

import os
import re
import tempfile
import zlib

TEMP_SUFFIX = ".tmp"


def atomic_write(path, data):
    """Write ``data`` (bytes or str, or a list of bytes-like pieces written one after
    the other) to ``path`` atomically. Returns (bytes written, their CRC-32)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(data, str):
        data = data.encode("utf-8")
    pieces = data if isinstance(data, (list, tuple)) else [data]
    size, crc = 0, 0
    mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX,
                               dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # mkstemp makes 0600; the final file gets open()'s mode
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
                crc = zlib.crc32(piece, crc)
                size += memoryview(piece).nbytes
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    return size, crc


def _final_mode(path):
    """The permissions the file gets: an existing file keeps its own (as rewriting it in
    place would); a new one gets 0666 less the umask, as open() and Caffe's ofstream."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask():
    # Read without changing it where Linux shows it; os.umask can only be read by setting.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_folder(folder):
    # The rename is durable only once the directory entry is on disk (POSIX); where a
    # folder cannot be opened (Windows) the rename is already durable or unsupported.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(path_prefix):
    """The temporary files :func:`atomic_write` left in the folder of ``path_prefix``
    for final names starting with its base name (a write that was killed)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path_prefix)))
    base = os.path.basename(os.fspath(path_prefix))
    pattern = re.compile(r"\.%s.*\.[A-Za-z0-9_]+%s\Z" % (re.escape(base), re.escape(TEMP_SUFFIX)))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if pattern.match(n))
