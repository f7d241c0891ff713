"""Reading inputs and writing outputs: atomic replacement, private key files created 0600."""

import contextlib
import os
import secrets
from pathlib import Path

from certs._errors import CertsError

_KEY_MODE = 0o600


def read_input(path: Path) -> bytes:
    """Read a whole input file, turning I/O failures into a CertsError naming the file.

    Raises:
        CertsError: The file is missing, is a directory or cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertsError("file not found", path=path) from None
    except OSError as exc:
        raise CertsError(f"cannot read file: {exc.strerror or exc}", path=path) from None


def refuse_existing(*paths: Path) -> None:
    """Raise if any of ``paths`` exists (a dangling symlink counts as existing).

    Raises:
        CertsError: Naming the first existing path.
    """
    for path in paths:
        if os.path.lexists(path):
            raise CertsError("refusing to overwrite existing file", path=path)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary file next to ``path``, created with ``mode``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed a 0644 request
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically create or replace ``path`` with ``data`` (temp file + ``os.replace``).

    Readers see either the old or the new content, never a partial file.

    Raises:
        OSError: The directory does not exist or is not writable.
    """
    tmp = _write_temp(path, data, mode)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private_key(path: Path, pem: bytes, *, overwrite: bool = False) -> None:
    """Atomically write a private key with mode 0600 from the moment the file exists.

    Without ``overwrite`` an existing file is never replaced, even if it appears between
    the check and the write (the temp file is hard-linked into place, which fails when the
    target exists).

    Raises:
        CertsError: ``path`` exists and ``overwrite`` is false.
        OSError: The directory does not exist or is not writable.
    """
    if overwrite:
        write_file_atomic(path, pem, mode=_KEY_MODE)
        return
    refuse_existing(path)
    tmp = _write_temp(path, pem, _KEY_MODE)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise CertsError("refusing to overwrite existing file", path=path) from None
    except OSError:
        # Filesystems without hard links: fall back to a checked replace.
        refuse_existing(path)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
