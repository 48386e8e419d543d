"""Files written crash-safely, and files of a directory that workers write to, opened inside it.

Every file gitqueue writes (a cache, the spool, the hook, the report) is written the same way: a
private temporary file in the same directory, fsync, rename(2) over the final name (which
replaces a link instead of writing through it), fsync of the directory. Readers see the old file
or the new one, never part of one; after a crash, too (`durable`).

The names in the package tree come from workers' results (incoming/TOKEN/NAME, logs/JOB/NAME):
hostile input. So a file is opened by walking its path one name at a time from a directory
descriptor, each name a plain file name (`layout.is_file_name`: no '/', no '..', no leading dot)
opened with O_NOFOLLOW, so that a symbolic link anywhere below the root is refused, never
followed; the last name must be a regular file (a FIFO would block, a device never end). The root
itself is the administrator's and is opened as given.
"""

import errno
import hashlib
import os
import shutil
import stat

from .layout import is_file_name

TMP_PREFIX = ".gitqueue-tmp-"  # plain file names start with a letter or digit: never a clash

_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR = _ROOT | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# What opening a name below the root may meet that means "not a file we may read": missing, a link
# (ELOOP), a file where a directory should be, no permission, a socket or device.
_REFUSED = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENXIO, errno.ENODEV,
            errno.EISDIR, errno.EAGAIN}


def _open_root(root) -> int:
    return os.open(root, _ROOT) if isinstance(root, (str, bytes, os.PathLike)) else os.dup(root)


def open_dir(root, *names: str, create: bool = False) -> int | None:
    """A descriptor of the directory ROOT/NAME/..., or None when there is no such directory.

    Args:
        root: a path, opened as given (errors opening it are raised), or a directory descriptor
            (left open).
        names: the names below it, each a plain file name (`layout.is_file_name`).
        create: make the missing directories (mode 0755).

    Returns:
        A new descriptor that the caller closes, or None when a name is not a plain file name, or
        names a symbolic link, something that is not a directory, or nothing (without `create`).
    """
    fd = _open_root(root)
    for name in names:
        try:
            inner = _open_below(fd, name, create)
        finally:
            os.close(fd)
        if inner is None:
            return None
        fd = inner
    return fd


def _open_below(fd: int, name: str, create: bool) -> int | None:
    if not is_file_name(name):
        return None
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except OSError as e:
        if e.errno in _REFUSED:
            return None
        raise


def open_file(root, *names: str) -> int | None:
    """A read descriptor of the regular file ROOT/.../NAME, or None when there is none.

    Every name is checked and opened as `open_dir` does; the last one must be a regular file (not a
    symbolic link, FIFO, device or directory). The caller closes the descriptor.
    """
    if not names or not is_file_name(names[-1]):
        return None
    directory = open_dir(root, *names[:-1])
    if directory is None:
        return None
    try:
        fd = os.open(names[-1], _FILE, dir_fd=directory)
    except OSError as e:
        if e.errno in _REFUSED:
            return None
        raise
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def open_own(dir_fd: int, name: str):
    """A binary file object reading NAME in `dir_fd`, a file this process writes (a temporary file,
    a cache) whose name is not checked; a link is not followed."""
    return open(name, "rb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW, dir_fd=dir_fd))


def lstat(dir_fd: int, name: str):
    """The lstat of NAME in the directory `dir_fd` (a link is not followed), or None when absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def temp_file(dir_fd: int, prefix: str = TMP_PREFIX) -> tuple[int, str]:
    """(write descriptor, name) of a new private file in the directory `dir_fd`."""
    name = f"{prefix}{os.getpid()}-{os.urandom(8).hex()}"  # os.urandom: no `secrets` import in a claim
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                   dir_fd=dir_fd), name


def install(dir_fd: int, temp: str, name: str, temp_dir_fd: int | None = None) -> None:
    """Rename the (fsynced) file `temp` of `temp_dir_fd` (default `dir_fd`) over `name` in
    `dir_fd`, then fsync the directory."""
    os.replace(temp, name, src_dir_fd=dir_fd if temp_dir_fd is None else temp_dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


def unlink(path: str, dir_fd: int | None = None) -> bool:
    """Remove the file `path` (relative to `dir_fd` if given); False when it was not there."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def fsync_dir(path: str) -> None:
    """Make the names in the directory `path` (a rename, a new file) survive a crash, where the file
    system allows: some cannot fsync a directory, and the data is safe without it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(dir_fd: int, name: str, data: bytes | str, prefix: str = TMP_PREFIX, *, mode: int | None = None,
                 durable: bool = True) -> None:
    """Replace NAME in the directory `dir_fd` with `data`: readers see the old file or the new one.

    Args:
        data: the contents; text is written as UTF-8.
        prefix: of the temporary file's name (see `sweep`).
        mode: the new file's permissions (default 0644 less the umask).
        durable: fsync the file and the directory, so that after a crash, too, the file is the
            old one or the new one whole. Without it (a cache, the spool: nothing a crash does not
            make moot) the write skips two fsyncs, ~0.6 ms.
    """
    fd, temp = temp_file(dir_fd, prefix)
    installed = False
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        if durable:
            install(dir_fd, temp, name)
        else:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        installed = True
    finally:
        if not installed:
            unlink(temp, dir_fd)


def replace_file(path: str, data: bytes | str, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace the file at `path` with `data` as `write_atomic` does (a link there is replaced).

    Its directory is the caller's and is opened as given.
    """
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomic(directory, os.path.basename(path), data, mode=mode, durable=durable)
    finally:
        os.close(directory)


def write_json(path: str, data, **options) -> None:
    """Write a JSON file of the cache (not a record) by rename: readers see all of it or none.

    Not fsynced: a cache is rebuilt, and a spool request is moot, after a crash. `options` go to
    json.dumps.
    """
    import json

    replace_file(path, json.dumps(data, **options), durable=False)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sweep(dir_fd: int, prefix: str = TMP_PREFIX) -> None:
    """Remove the temporary files a crashed writer left in the directory `dir_fd`."""
    for name in os.listdir(dir_fd):
        if name.startswith(prefix):
            unlink(name, dir_fd)


def remove_tree(dir_fd: int, name: str) -> bool:
    """Remove the directory NAME of `dir_fd` and all it holds, following no link; False if NAME is
    not a directory (a link, a file: left alone) or is gone."""
    st = lstat(dir_fd, name)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return False
    # rmtree's descriptor-based walk (Linux, the BSDs) opens each directory with O_NOFOLLOW and
    # checks it is the one it listed: a link swapped in meanwhile is refused, not followed.
    if not shutil.rmtree.avoids_symlink_attacks:
        raise OSError(errno.ENOTSUP, "shutil.rmtree follows symbolic links on this platform; not removing", name)
    try:
        shutil.rmtree(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
