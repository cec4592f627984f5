"""The state directory's permissions: a 0700 folder of 0600 files, none reached through a link.

``state-dir`` holds the request database (client ids, statuses, rounds,
idempotency keys), the API's endpoint file and, on loopback, its token: what
the API guards with its token must not be readable by other local users.

* :func:`prepare_state_dir` creates the folder with mode 0700; an existing
  folder that group or others may access gets a warning naming the fix
  (``chmod 700 DIR``). It is not changed: its owner may share it on purpose.
* :func:`create_private_file` and :func:`write_private_file` create files with
  mode 0600 and ``O_EXCL | O_NOFOLLOW``: never through a symbolic link, never
  into a file someone else created first.
* :func:`read_private_file` reads a secret only from a regular file (not a
  symbolic link) owned by this process's user that group and others cannot
  read; otherwise :class:`InsecureFileError` says how to fix it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
GROUP_OTHER_BITS = 0o077
MAX_SECRET_BYTES = 4096

logger = logging.getLogger(__name__)
_warned: set[Path] = set()


class InsecureFileError(RuntimeError):
    """A secret's file may be read or replaced by another user; the message says how to fix it."""


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (parents as usual); warn once if an existing one is open."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        resolved = path.resolve()
        if mode & GROUP_OTHER_BITS and resolved not in _warned:
            _warned.add(resolved)
            logger.warning(
                "state-dir %s has mode %o: other local users can read its request database; "
                "run: chmod 700 %s",
                path,
                mode,
                path,
            )
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # a umask may have narrowed it below what we need
    return path


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``; fail if it exists or is a symbolic link.

    Raises
    ------
    FileExistsError
        If anything (a file, a symbolic link, even a dangling one) is at ``path``.

    """
    descriptor = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE
    )
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), PRIVATE_FILE_MODE)
        file.write(data)


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically by a new 0600 file holding ``text`` (a link is not followed)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash; unlink removes a link, not its target
    create_private_file(temporary, text.encode())
    temporary.replace(path)


def tighten_private_file(path: Path) -> None:
    """Set an existing file of ours to 0600 (e.g. a database written by an older fedforget)."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(status.st_mode) and stat.S_IMODE(status.st_mode) & GROUP_OTHER_BITS:
        os.chmod(path, PRIVATE_FILE_MODE)
        logger.warning("%s was readable by other users: its mode is now 600", path)


def read_private_file(path: Path, what: str) -> bytes:
    """Return the content of a secret file after checking who else may read or replace it.

    Parameters
    ----------
    path : Path
        The file.
    what : str
        What it is, for messages (e.g. ``"api-token-file"``).

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    InsecureFileError
        If ``path`` is a symbolic link or not a regular file, is owned by
        another user, or group or others have any access to it.

    """
    try:
        # O_NONBLOCK: a FIFO put in the token's place must not hang the server
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InsecureFileError(
                f"{what} {path} is a symbolic link: a secret is read only from a regular file "
                f"of your own; replace the link with the file it points to (cp "
                f'--remove-destination "$(readlink -f {path})" {path}; chmod 600 {path})'
            ) from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise InsecureFileError(f"{what} {path} is not a regular file: put the secret in one")
        if status.st_uid != os.geteuid():
            raise InsecureFileError(
                f"{what} {path} is owned by uid {status.st_uid}, not by the user running the "
                f"server (uid {os.geteuid()}): create it as that user, or chown it to them"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & GROUP_OTHER_BITS:
            raise InsecureFileError(
                f"{what} {path} has mode {mode:o}: other users may read it; run: chmod 600 {path}"
            )
        return file.read(MAX_SECRET_BYTES)
