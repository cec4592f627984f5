"""The state directory's permissions: a 0700 folder of 0600 files, none reached through a link.

``state-dir`` holds the request database (client ids, statuses, rounds,
idempotency keys), the API's endpoint file and, on loopback, its token: what
the API guards with its token must not be readable by other local users.

* :func:`prepare_state_dir` creates the folder with mode 0700. An existing
  folder is refused (:func:`check_own_dir`) if it is a symbolic link, is
  owned by another user, or group or others may write to it: they could put
  their own ``api.json`` there and receive the token of whoever trusts it,
  or replace the request database. One that group or others may only read
  gets a warning naming the fix (``chmod 700 DIR``) and is not changed: its
  owner may share it on purpose.
* :func:`create_private_file` and :func:`write_private_file` create files with
  mode 0600 and ``O_EXCL | O_NOFOLLOW``: never through a symbolic link, never
  into a file someone else created first.
* :func:`read_private_file` reads a secret only from a regular file (not a
  symbolic link) owned by this process's user that group and others cannot
  read; :func:`read_own_file` reads a file that is not secret but must be
  trusted (the API's ``api.json``) only if it is such a file that group and
  others cannot write. Otherwise :class:`InsecureFileError` says how to fix it.
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
GROUP_OTHER_WRITE_BITS = 0o022
MAX_SECRET_BYTES = 4096
MAX_TRUSTED_FILE_BYTES = 64 * 1024

logger = logging.getLogger(__name__)
_warned: set[Path] = set()


class InsecureFileError(RuntimeError):
    """A secret's file may be read or replaced by another user; the message says how to fix it."""


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (parents as usual), or check an existing one.

    Raises
    ------
    InsecureFileError
        If an existing ``path`` fails :func:`check_own_dir`; one only group or
        others may read gets a warning (once) instead.

    """
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        mode = check_own_dir(path, "state-dir")
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


def check_own_dir(path: Path, what: str) -> int:
    """Return the mode of ``path`` if only this process's user can change what is in it.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    InsecureFileError
        If ``path`` is a symbolic link or not a directory, is owned by another
        user, or group or others may write to it (create, rename or delete
        its files); the message says how to fix it.

    """
    status = os.lstat(path)
    if stat.S_ISLNK(status.st_mode):
        raise InsecureFileError(
            f"{what} {path} is a symbolic link: whoever can change the link chooses the folder; "
            f"give the folder itself ({path.resolve()})"
        )
    if not stat.S_ISDIR(status.st_mode):
        raise InsecureFileError(f"{what} {path} is not a directory: give a folder of your own")
    if status.st_uid != os.geteuid():
        raise InsecureFileError(
            f"{what} {path} is owned by uid {status.st_uid}, not by you (uid {os.geteuid()}): its "
            "owner can replace the files in it (e.g. api.json, which says where the token is "
            "sent); use a folder of your own"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & GROUP_OTHER_WRITE_BITS:
        raise InsecureFileError(
            f"{what} {path} has mode {mode:o}: other users may create or replace files in it "
            f"(e.g. api.json, which says where the token is sent); run: chmod 700 {path}"
        )
    return mode


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
        If ``path`` is a symbolic link or not a regular file (a directory, a
        FIFO), is owned by another user, or group or others have any access
        to it.

    """
    return _read_checked(path, what, GROUP_OTHER_BITS, "read", MAX_SECRET_BYTES)


def read_own_file(path: Path, what: str) -> bytes:
    """Return the content of a file that must be trusted, not secret (e.g. ``api.json``).

    As :func:`read_private_file`, except that group and others may read it;
    they must not be able to write it.
    """
    return _read_checked(path, what, GROUP_OTHER_WRITE_BITS, "change", MAX_TRUSTED_FILE_BYTES)


def _read_checked(path: Path, what: str, forbidden: int, risk: str, limit: int) -> bytes:
    """Read ``path`` if it is a regular file of this user without any ``forbidden`` mode bit."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the reader
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InsecureFileError(
                f"{what} {path} is a symbolic link: it is read only from a regular file "
                f"of your own; replace the link with the file it points to (cp "
                f'--remove-destination "$(readlink -f {path})" {path}; chmod 600 {path})'
            ) from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
            raise InsecureFileError(f"{what} {path} is {kind}: give the file that holds it")
        if status.st_uid != os.geteuid():
            raise InsecureFileError(
                f"{what} {path} is owned by uid {status.st_uid}, not by the user running this "
                f"(uid {os.geteuid()}): create it as that user, or chown it to them"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & forbidden:
            raise InsecureFileError(
                f"{what} {path} has mode {mode:o}: other users may {risk} it; run: chmod 600 {path}"
            )
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read(limit)
    finally:
        os.close(descriptor)
