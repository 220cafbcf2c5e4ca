"""Guarding an output folder: writable, one run at a time, same config or ``--overwrite``.

``OutputDir(path, command, config, overwrite)`` as a context manager:
1. creates the folder and checks it is writable (clear error if not);
2. takes an exclusive lock ``.curate/lock`` (``fcntl.flock``; released by the kernel even
   on kill -9), so a second run on the same folder fails at once with the holder's pid.
   Forked children (worker pools, DataLoader decode workers) close their copy of the lock at
   once: a child that outlives a killed run by a few seconds never holds the folder;
3. compares the config fingerprint with ``.curate/run.json`` left by an earlier run: same
   config resumes, a different one is refused unless ``overwrite`` (then the folder is
   emptied first). A non-empty folder that curate did not make is refused the same way.
   A run that wrote nothing (no file besides the lock and ``run.json``: it failed or was
   stopped before its first output) pins nothing: the next run's config replaces its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import weakref
from pathlib import Path
from typing import Any

from .errors import CurateError
from .fsutil import TMP_MARK, clean_temp_files, dump_json, read_json, write_json
from .storage import urls_in

META = ".curate"
_LOCKED: weakref.WeakSet[OutputDir] = weakref.WeakSet()  # folders this process holds the lock of


def _drop_inherited_locks() -> None:
    """In a forked child: close the inherited lock descriptors (never unlock: the parent holds them),
    so the lock goes with the parent's death, not with its slowest child's."""
    for od in list(_LOCKED):
        if od._lock_fd is not None:
            try:
                os.close(od._lock_fd)
            except OSError:
                pass
            od._lock_fd = None
    _LOCKED.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def config_fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".curate-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CurateError(f"output folder is not writable ({e.strerror or e})", where=str(path),
                          fix="choose another --out or fix the folder's permissions") from e


class OutputDir:
    def __init__(self, path: str | os.PathLike, command: str, config: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        self.command = command
        self.config = urls_in(config)  # a mirrored URL is recorded as the URL: the same on every machine
        self.overwrite = overwrite
        self.fingerprint = config_fingerprint(self.config)
        self._lock_fd: int | None = None

    @property
    def meta(self) -> Path:
        return self.path / META

    def __enter__(self) -> OutputDir:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        ensure_writable(self.path)
        self._check_foreign()
        self.meta.mkdir(exist_ok=True)
        self._lock()
        try:
            self._check_previous_run()
        except BaseException:
            self._unlock()  # a refused or failed open must not keep the folder locked
            raise
        clean_temp_files(self.path)  # a killed run's half-written files are never outputs

    def _check_previous_run(self) -> None:
        run_file = self.meta / "run.json"
        if run_file.exists():
            prev = read_json(run_file)
            differs = prev.get("fingerprint") != self.fingerprint or prev.get("command") != self.command
            if differs and self.holds_outputs():  # an earlier run that wrote nothing pins nothing
                if not self.overwrite:
                    changed = sorted(
                        k for k in set(prev.get("config", {})) | set(self.config)
                        if prev.get("config", {}).get(k) != self.config.get(k)
                    )
                    raise CurateError(
                        f"holds the output of another run ({prev.get('command')}) with a different config"
                        + (f" (differs in: {', '.join(changed[:6])})" if changed else ""),
                        where=str(self.path),
                        fix="rerun with the same options to resume, pass --overwrite to replace it, or choose another --out",
                    )
                self._clear()
        write_json(run_file, {"command": self.command, "fingerprint": self.fingerprint, "config": self.config})

    def holds_outputs(self) -> bool:
        """Does the folder hold any file besides the lock and ``run.json`` (a killed run's temp files aside)?
        Stops at the first one, so a full folder answers at once."""
        bookkeeping = {self.meta / "lock", self.meta / "run.json"}
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if TMP_MARK not in name and Path(root, name) not in bookkeeping:
                    return True
        return False

    def _check_foreign(self) -> None:
        entries = [p for p in self.path.iterdir() if p.name != META]
        if entries and not (self.meta / "run.json").exists():
            if not self.overwrite:
                raise CurateError(
                    f"is not empty and was not made by curate ({len(entries)} entries, e.g. {entries[0].name})",
                    where=str(self.path),
                    fix="choose an empty or new --out, or pass --overwrite to empty it first",
                )
            self._clear()

    def _clear(self) -> None:
        home = Path.home().resolve()
        target = self.path.resolve()
        if target in (Path("/"), home) or len(target.parts) < 3:
            raise CurateError("refusing to empty this folder", where=str(target), fix="choose a dedicated --out folder")
        for p in self.path.iterdir():
            if p.name == META:
                for q in p.iterdir():
                    if q.name != "lock":
                        shutil.rmtree(q) if q.is_dir() else q.unlink()
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def _lock(self) -> None:
        lock_path = self.meta / "lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            try:
                holder = os.read(fd, 64).decode().strip() or "?"
            finally:
                os.close(fd)
            raise CurateError(
                f"another curate run (pid {holder}) is using this output folder",
                where=str(self.path),
                fix="wait for it to finish, or choose another --out",
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        _LOCKED.add(self)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        _LOCKED.discard(self)

    def close(self) -> None:
        self._unlock()

    def describe(self) -> str:
        return dump_json({"path": str(self.path), "command": self.command, "fingerprint": self.fingerprint})
