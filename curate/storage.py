"""Object storage (``s3://``, ``gs://``, any fsspec URL) for every command, through one layer.

A URL goes to its library through ``fsspec.core.url_to_fs``: ``s3://`` to s3fs, ``gs://`` to
gcsfs, the same code for both. Credentials and endpoints come from each library's own
environment and config (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL`` for an S3-compatible server; ``GOOGLE_APPLICATION_CREDENTIALS``; fsspec's
config files), never from curate's flags or files.

How a command takes a URL (``curate/cli.py: main`` calls :func:`remote_args`): every argument
that is a storage URL is *mirrored* in a local folder, ``CURATE_CACHE/remote/SCHEME/BUCKET/KEY``
(:func:`mirror_path`), and the command runs on that folder as on any local path:

- before it runs, what the URL holds is fetched into the mirror (a file, a prefix, or the keys a
  glob or brace pattern matches), skipping files whose ETag and size are unchanged since the
  last fetch; a missing input is left missing, so the command's own check names it (errors
  print URLs, not mirror paths: :func:`to_urls`);
- while it runs, a pusher thread uploads every new or changed file every ``CURATE_SYNC_SECONDS``
  (10), and once more when it ends (also on an error or Ctrl-C). Each file is one PUT (or one
  completed multipart upload), so an object appears whole or not at all; temp files are never
  uploaded; the ``.curate/`` done markers are listed *before* and uploaded *after* the other
  files, so a marker never reaches the bucket before the outputs it names. A killed run
  therefore leaves the bucket as a resumable folder: the rerun (on any machine) fetches it and
  the ledger skips what is done.
- the output (``--out`` / ``-o``) gets more: it is locked (:class:`RemoteLock`: a lock object
  created with a conditional PUT, ``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS), a
  prefix that holds objects curate did not write is refused whatever the flags (they are never
  deleted or overwritten), and files the command deletes locally (``--overwrite``, a stage
  redone) are deleted from the prefix too, only if this layer fetched or uploaded them.

The functions below (:func:`filesystem`, :func:`exists`, :func:`open_read`, :func:`write_bytes`,
:func:`find`) are also the way code reads or writes one URL directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import CurateError
from .fsutil import TMP_MARK, dump_json
from .paths import GLOB_CHARS, cache_dir
from .world import WORLD_JSON

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# URLs that name a service, not stored files: left to the option that takes them
NOT_STORAGE = frozenset({"http", "https", "mongodb", "mongodb+srv", "ray", "ws", "wss", "redis", "tcp", "grpc",
                         "file", "local"})
OUT_FLAGS = ("--out", "-o")
FOLDER_FILES = (WORLD_JSON,)  # files fetched with the folder that holds them (a demo world's readers open its siblings)
NOT_PATH_FLAGS = ("--bucket", "--database-uri", "--address", "--llm")  # take a URL, but not as a path
LOCK_KEY = ".curate/remote-lock.json"
STAMP_KEY = ".curate/remote.json"
_REMOTE_ONLY = (LOCK_KEY, STAMP_KEY)
_LOCAL_ONLY = (".curate/lock",)
CREDENTIALS_FIX = ("check the credentials the library reads: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                   "AWS_PROFILE (and AWS_ENDPOINT_URL for an S3-compatible server) for s3://, "
                   "GOOGLE_APPLICATION_CREDENTIALS for gs://")


# -- URLs and filesystems ----------------------------------------------------------------------
def scheme(s: str | os.PathLike) -> str | None:
    m = _SCHEME.match(str(s))
    return m.group(1).lower() if m else None


def is_remote(s: str | os.PathLike | None) -> bool:
    """Is ``s`` a storage URL (``s3://``, ``gs://`` ...; not a local path, not an http or database URL)?"""
    sch = scheme(s) if s is not None else None
    return sch is not None and sch not in NOT_STORAGE


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL; a clear error for a scheme no library handles."""
    from fsspec.core import url_to_fs

    sch = scheme(url)
    try:
        return url_to_fs(url)
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise CurateError(f"no storage library handles the URL scheme {sch!r}", where=url,
                              fix="use s3:// (s3fs) or gs:// (gcsfs), or a local path") from e
        raise CurateError(f"cannot open this URL ({e})", where=url) from e
    except ImportError as e:
        raise CurateError(f"the URL scheme {sch!r} needs a library that is not installed ({e})", where=url,
                          fix='pip install -c constraints.txt -e ".[gcs]" (gs://); s3fs comes with curate') from e


def _endpoint_hint(url: str) -> str:
    """The variable that points a scheme's library at another server than the cloud's."""
    return {"gs": "STORAGE_EMULATOR_HOST for a GCS emulator"}.get(scheme(url) or "",
                                                                 "AWS_ENDPOINT_URL for an S3-compatible server")


def join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel


@contextlib.contextmanager
def remote_errors(url: str, doing: str) -> Iterator[None]:
    """Turn a library's failure on ``url`` into one clear line (what, where, how to fix)."""
    try:
        yield
    except CurateError:
        raise
    except FileNotFoundError as e:
        raise CurateError(f"{doing}: not found ({e})", where=url,
                          fix=f"check the bucket and key (and {_endpoint_hint(url)})") from e
    except PermissionError as e:
        raise CurateError(f"{doing}: access denied ({e})", where=url, fix=CREDENTIALS_FIX) from e
    except OSError as e:
        if str(e).startswith("Forbidden"):  # gcsfs's 403 is a plain OSError("Forbidden: ...")
            raise CurateError(f"{doing}: access denied ({str(e)[:300]})", where=url, fix=CREDENTIALS_FIX) from e
        raise _failed(url, doing, e) from e
    except Exception as e:  # noqa: BLE001 - any other library failure (connection refused, timeouts ...)
        raise _failed(url, doing, e) from e


def _failed(url: str, doing: str, e: BaseException) -> CurateError:
    return CurateError(f"{doing} failed ({type(e).__name__}: {str(e)[:300]})", where=url,
                       fix=f"check the endpoint ({_endpoint_hint(url).split()[0]}) and the network, then rerun the "
                           "same command: finished files are kept")


def check_bucket(url: str) -> str:
    """The bucket of ``url`` when it exists and these credentials can list it, else a clear error."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    with remote_errors(url, f"reaching bucket {bucket!r}"):
        try:
            fs.ls(bucket, detail=False)
        except FileNotFoundError as e:
            raise CurateError(f"bucket {bucket!r} does not exist", where=url,
                              fix=f"create it first, or check the URL (and {_endpoint_hint(url)})") from e
    return bucket


def exists(url: str | os.PathLike) -> bool:
    if not is_remote(url):
        return Path(url).exists()
    fs, path = filesystem(str(url))
    with remote_errors(str(url), "checking"):
        return fs.exists(path)


def find(url: str) -> dict[str, dict[str, Any]]:
    """Every object under ``url`` (a key, a prefix, or a glob / brace pattern), by full path."""
    from braceexpand import braceexpand

    fs, path = filesystem(url)
    out: dict[str, dict[str, Any]] = {}
    with remote_errors(url, "listing"):
        for pat in braceexpand(path) if "{" in path else [path]:
            if GLOB_CHARS & set(pat):
                out.update({k: v for k, v in fs.glob(pat, detail=True).items() if v.get("type") == "file"})
            elif fs.isfile(pat):
                out[pat] = fs.info(pat)
            else:
                out.update(fs.find(pat, detail=True))
    return out


def open_read(url: str | os.PathLike) -> IO[bytes]:
    if not is_remote(url):
        return open(url, "rb")
    fs, path = filesystem(str(url))
    with remote_errors(str(url), "opening"):
        return fs.open(path, "rb")


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically: locally temp + rename, on object storage one PUT (whole or nothing)."""
    if not is_remote(url):
        from .fsutil import write_bytes as write_local

        write_local(url, data)
        return
    fs, path = filesystem(str(url))
    with remote_errors(str(url), "writing"):
        fs.pipe_file(path, data)


def put_file(local: Path, url: str) -> None:
    """Upload one finished local file: one PUT, or a multipart upload completed only at the end."""
    fs, path = filesystem(url)
    with remote_errors(url, "uploading"):
        fs.put_file(str(local), path)


# -- the local mirror ----------------------------------------------------------------------------
def mirror_root() -> Path:
    return (cache_dir() / "remote").resolve()  # resolved: commands resolve their paths too


def mirror_path(url: str) -> Path:
    """The local folder (or file) that mirrors ``url``: ``CURATE_CACHE/remote/SCHEME/BUCKET/KEY``."""
    sch = scheme(url) or "file"
    rest = url.split("://", 1)[1].strip("/")
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise CurateError("a storage URL may not hold '..'", where=url)
    return mirror_root().joinpath(sch, *parts)


def to_url(path: str | os.PathLike) -> str:
    """The URL a mirror path stands for (other paths unchanged)."""
    s, root = str(path), str(mirror_root())
    if not s.startswith(root + os.sep):
        return s
    sch, _, rest = s[len(root) + 1:].partition(os.sep)
    return f"{sch}://{rest.replace(os.sep, '/')}"


def to_urls(text: str) -> str:
    """Every mirror path in ``text`` (an error message) written as its URL."""
    root = re.escape(str(mirror_root()) + os.sep)
    return re.sub(root + r"([A-Za-z0-9+.\-]+)/(\S*)", lambda m: f"{m.group(1)}://{m.group(2)}", text)


def urls_in(obj: Any) -> Any:
    """``obj`` (a config) with every mirror path replaced by its URL, so a fingerprint of it is the
    same on every machine (whatever its cache folder)."""
    if isinstance(obj, dict):
        return {k: urls_in(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(urls_in(v) for v in obj)
    if isinstance(obj, str | Path) and str(obj).startswith(str(mirror_root()) + os.sep):
        return to_url(obj)
    return obj


class _State:
    """What this machine last fetched or uploaded, per object: ``[etag, size, local mtime_ns]``, one
    JSON file per bucket (``CURATE_CACHE/remote/.state/SCHEME/BUCKET.json``), shared by the mirrors."""

    _open: dict[str, _State] = {}

    def __init__(self, file: Path):
        self.file = file
        try:
            self.rec: dict[str, list] = json.loads(file.read_text())
        except (OSError, ValueError):
            self.rec = {}
        self.mutex = threading.RLock()

    @classmethod
    def of(cls, sch: str, bucket: str) -> _State:
        file = mirror_root() / ".state" / sch / f"{bucket}.json"
        key = str(file)
        if key not in cls._open:
            cls._open[key] = cls(file)
        return cls._open[key]

    def save(self) -> None:
        from .fsutil import write_text

        with self.mutex:
            write_text(self.file, dump_json(self.rec))


def _tag(info: dict[str, Any]) -> list:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation") or ""
    return [str(etag).strip('"'), int(info.get("size") or 0)]


def _is_meta(rel: str) -> bool:
    return ".curate" in rel.split("/")


class Mirror:
    """One URL argument of a command and its local mirror: :meth:`pull` before, :meth:`push` during
    and after (see the module docstring)."""

    def __init__(self, url: str, output: bool = False):
        self.url, self.output = url, output
        self.fs, self.path = filesystem(url)
        self.path = self.path.rstrip("/")
        self.sch = scheme(url) or ""
        self.local = mirror_path(url)
        self.pattern = bool(GLOB_CHARS & set(self.path))
        self.state = _State.of(self.sch, self.path.split("/", 1)[0])
        self.lock: RemoteLock | None = None

    def local_of(self, full: str) -> Path:
        return mirror_root().joinpath(self.sch, *full.split("/"))

    def full_of(self, local: Path) -> str:
        return local.relative_to(mirror_root() / self.sch).as_posix()

    def _usable(self, full: str, info: dict[str, Any]) -> bool:
        rel = full[len(self.path) + 1:] if full.startswith(self.path + "/") else full
        name = full.rsplit("/", 1)[-1]
        return (info.get("type", "file") == "file" and not full.endswith("/") and TMP_MARK not in name
                and rel not in _REMOTE_ONLY and ".." not in full.split("/"))

    def pull(self) -> None:
        """Fetch what the URL holds (changed objects only); for the output, lock it first."""
        check_bucket(self.url)
        found = find(self.url)
        objs = {k: v for k, v in found.items() if self._usable(k, v)}
        if self.output:
            self._check_foreign(found)
            self.lock = RemoteLock(self.fs, self.path, self.url)
            self.lock.acquire()
        self._reconcile(objs)
        with self.state.mutex:
            for full, info in sorted(objs.items()):
                self._fetch(full, info)
            self.state.save()

    def _check_foreign(self, objs: dict[str, Any]) -> None:
        if objs and not any(_is_meta(k[len(self.path) + 1:]) for k in objs):
            example = f"{self.sch}://{sorted(objs)[0]}"
            raise CurateError(f"holds {len(objs)} object(s) that curate did not write (e.g. {example}); they are "
                              "never deleted or overwritten", where=self.url,
                              fix="choose an empty or new --out prefix")

    def _reconcile(self, objs: dict[str, Any]) -> None:
        """The mirror follows the bucket: an object deleted there since the last sync is deleted here;
        the output's mirror starts empty when its prefix is empty."""
        import shutil

        with self.state.mutex:
            mine = [k for k in self.state.rec if k == self.path or k.startswith(self.path + "/")]
            if self.output and not objs and self.local.exists():
                shutil.rmtree(self.local) if self.local.is_dir() else self.local.unlink()
            for k in mine:
                if k not in objs:
                    self.local_of(k).unlink(missing_ok=True)
                    del self.state.rec[k]
            if self.output:
                with remote_errors(self.url, "writing"):
                    self.fs.pipe_file(join(self.path, STAMP_KEY), dump_json({"written_by": "curate"}).encode())

    def _fetch(self, full: str, info: dict[str, Any]) -> None:
        dest = self.local_of(full)
        tag, rec = _tag(info), self.state.rec.get(full)
        if rec and rec[:2] == tag and dest.is_file():
            return  # unchanged there since our last sync (a newer local copy is pushed later)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}{TMP_MARK}pull-{os.getpid()}")  # tasks of one node may pull at once
        try:
            with remote_errors(f"{self.sch}://{full}", "fetching"):
                self.fs.get_file(full, str(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        self.state.rec[full] = tag + [dest.stat().st_mtime_ns]

    def _listing(self, meta: bool) -> list[Path]:
        if self.local.is_file():
            return [] if meta else [self.local]
        found = []
        for root, dirs, names in os.walk(self.local):
            dirs.sort()
            for n in sorted(names):
                p = Path(root, n)
                rel = p.relative_to(self.local).as_posix()
                if TMP_MARK in n or n.startswith(".curate-write-probe-") or rel in _LOCAL_ONLY:
                    continue
                if _is_meta(rel) == meta:
                    found.append(p)
        return found

    def push(self, uploaded: list[str] | None = None) -> int:
        """Upload new and changed files (markers last; their keys appended to ``uploaded``); for the output,
        delete what was deleted here."""
        if self.pattern or not self.local.exists():
            return 0
        with self.state.mutex:
            markers = self._listing(meta=True)  # listed first: their outputs are on disk already
            n = 0
            for p in self._listing(meta=False) + markers:
                if self._upload(p):
                    n += 1
                    if uploaded is not None:
                        uploaded.append(self.full_of(p))
            if self.output:
                n += self._delete_gone()
            if n:
                self.state.save()
        return n

    def _upload(self, p: Path) -> int:
        try:
            st = p.stat()
        except FileNotFoundError:
            return 0
        full = self.full_of(p)
        rec = self.state.rec.get(full)
        if rec and rec[1] == st.st_size and rec[2] == st.st_mtime_ns:
            return 0
        put_file(p, f"{self.sch}://{full}")
        with remote_errors(f"{self.sch}://{full}", "checking an upload"):
            self.state.rec[full] = _tag(self.fs.info(full)) + [st.st_mtime_ns]
        return 1

    def _delete_gone(self) -> int:
        gone = [k for k in self.state.rec if k.startswith(self.path + "/") and not self.local_of(k).exists()]
        for k in gone:
            with remote_errors(f"{self.sch}://{k}", "deleting"):
                self.fs.rm_file(k)
            del self.state.rec[k]
        return len(gone)


class RemoteLock:
    """One run at a time on an output prefix: ``PREFIX/.curate/remote-lock.json`` (host, pid, start,
    heartbeat), created with a conditional PUT (``pipe_file(mode="create")``: s3fs sends
    ``If-None-Match: *``, gcsfs ``ifGenerationMatch=0``; the server refuses a second create, 412, which
    both raise as FileExistsError). The holder rewrites its heartbeat every sync pass and deletes the object when it ends.
    A lock left by a killed run is taken over when its pid is gone from this host, or when its
    heartbeat is older than ``CURATE_REMOTE_LOCK_STALE`` seconds (600)."""

    def __init__(self, fs: Any, prefix: str, url: str):
        self.fs, self.key, self.url = fs, join(prefix, LOCK_KEY), join(url, LOCK_KEY)
        self.body = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        self.held = False

    def _put(self, create: bool) -> None:
        data = dump_json({**self.body, "beat": time.time()}).encode()
        try:
            self.fs.pipe_file(self.key, data, mode="create" if create else "overwrite")
        except TypeError:  # a filesystem without conditional writes: check, then write (best effort)
            if create and self.fs.exists(self.key):
                raise FileExistsError(self.key) from None
            self.fs.pipe_file(self.key, data)

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OSError):
                pass
        limit = float(os.environ.get("CURATE_REMOTE_LOCK_STALE", "600"))
        return time.time() - float(holder.get("beat", 0)) > limit

    def acquire(self) -> None:
        with remote_errors(self.url, "locking the output"):
            for _ in range(3):
                try:
                    self._put(create=True)
                    self.held = True
                    return
                except FileExistsError:
                    try:
                        holder = json.loads(self.fs.cat_file(self.key))
                    except FileNotFoundError:
                        continue  # released meanwhile
                    except ValueError:
                        holder = {}
                    if not self._stale(holder):
                        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
                        raise CurateError(
                            f"another curate run (pid {holder.get('pid')} on {holder.get('host')}, since {since}) "
                            "is writing this output", where=self.url.rsplit("/.curate/", 1)[0],
                            fix=f"wait for it to finish, or choose another --out; if that run is dead, delete "
                                f"{self.url} (a lock without a heartbeat is taken over after "
                                f"{os.environ.get('CURATE_REMOTE_LOCK_STALE', '600')} s)") from None
                    self.fs.rm_file(self.key)  # a dead run's lock
        raise CurateError("could not take the output lock (it changed hands three times)", where=self.url)

    def beat(self) -> None:
        if self.held:
            self._put(create=False)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(Exception):
                self.fs.rm_file(self.key)
            self.held = False


# -- a command's arguments ------------------------------------------------------------------------
def _rewrite(argv: list[str]) -> tuple[list[str], list[Mirror]]:
    """argv with every storage URL replaced by its mirror path, and the mirrors (one per URL)."""
    out, mirrors, prev = [], {}, ""
    for a in argv:
        flag, eq, val = a.partition("=") if a.startswith("--") and "=" in a else ("", "", a)
        if is_remote(val) and (flag or prev) not in NOT_PATH_FLAGS:
            output = flag in OUT_FLAGS or (not flag and prev in OUT_FLAGS)
            # a file that stands for its folder (a demo world's world.json: its readers open its siblings)
            whole = val.rsplit("/", 1)[0] if val.rsplit("/", 1)[-1] in FOLDER_FILES else val
            m = mirrors.get(whole) or Mirror(whole, output)
            m.output = m.output or output
            mirrors[whole] = m
            local = mirror_path(val)
            a = f"{flag}={local}" if eq else str(local)
        out.append(a)
        prev = flag or val
    outs = [m for m in mirrors.values() if m.output]
    if len(outs) > 1:
        raise CurateError("more than one --out URL", fix="give one output")
    return out, list(mirrors.values())


def _push_all(mirrors: list[Mirror]) -> None:
    for m in mirrors:
        m.push()
        if m.lock is not None:
            m.lock.beat()


def _pusher(mirrors: list[Mirror], stop: threading.Event) -> None:
    from .log import logger

    every = float(os.environ.get("CURATE_SYNC_SECONDS", "10"))
    while not stop.wait(every):
        try:
            _push_all(mirrors)
        except Exception as e:  # noqa: BLE001 - the last pass, at the end, reports it
            logger.warning("uploading to object storage failed (retried at the end): %s", e)


@contextlib.contextmanager
def remote_args(argv: list[str]) -> Iterator[list[str]]:
    """Run a command whose arguments may be storage URLs: yields argv with mirror paths; fetches
    before, uploads during and after (see the module docstring). A no-op when no URL is given."""
    new, mirrors = _rewrite(argv)
    if not mirrors:
        yield argv
        return
    _ACTIVE[:] = mirrors
    stop = threading.Event()
    thread = threading.Thread(target=_pusher, args=(mirrors, stop), name="curate-storage-push", daemon=True)
    try:
        for m in sorted(mirrors, key=lambda m: not m.output):  # the output first: locked before any fetch
            m.pull()
        thread.start()
        ok = False
        try:
            yield new
            ok = True
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            try:
                _push_all(mirrors)
            except Exception:
                if ok:
                    raise
    finally:
        _ACTIVE.clear()
        with contextlib.suppress(OSError):
            _token().unlink()
        for m in mirrors:
            if m.lock is not None:
                m.lock.release()


# -- executor tasks on machines that do not share this mirror --------------------------------------
# A Ray task runs wherever the cluster puts it. Where the driver's mirror folder is visible (this machine,
# or a folder every node mounts) it reads and writes that folder. Elsewhere -- a node whose CURATE_CACHE is
# its own disk at the same path -- the task pulls the command's URLs into that machine's mirror (changed
# objects only), runs, uploads what it wrote under the output URL and returns the keys; the driver fetches
# those into its mirror before the task is marked done, so a marker still reaches the bucket after the
# outputs it names. Tables record the paths a stage read (as on one machine), so CURATE_CACHE must be the
# same path on every node (the default, ~/.cache/curate, in one image); a node where it is not refuses.
_ACTIVE: list[Mirror] = []  # the running command's mirrors (remote_args)
_SHARED_CHECK = ".shared-check"


def task_sync_spec() -> dict[str, Any] | None:
    """What a task on another machine needs to reach the running command's URLs (None: no URL given). A
    token file in this mirror tells a task whether it sees this very folder."""
    if not _ACTIVE:
        return None
    token = _token()
    if not token.exists():
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text("the mirror folder of a running curate command\n")
    return {"root": str(mirror_root()), "token": str(token), "mirrors": [[m.url, m.output] for m in _ACTIVE]}


def _token() -> Path:
    """This command's token file in its mirror folder (what a task looks for to know it sees that folder)."""
    return mirror_root() / _SHARED_CHECK / f"{socket.gethostname()}-{os.getpid()}"


def push_active() -> None:
    """Upload what the running command has written so far (as the pusher does every few seconds)."""
    _push_all(_ACTIVE)


def needs_task_sync(spec: dict[str, Any] | None) -> bool:
    """Does a task here run away from the driver's mirror folder (it cannot see the driver's token)?"""
    if spec is None or Path(spec["token"]).exists():
        return False
    if str(mirror_root()) != spec["root"]:
        raise CurateError(f"this node's object-storage mirror is {mirror_root()}, the command's is {spec['root']}",
                          where=f"node {socket.gethostname()}",
                          fix="set CURATE_CACHE to the same path on every node (or mount one shared folder there)")
    return True


def pull_for_task(spec: dict[str, Any]) -> list[tuple[Mirror, bool]]:
    """Before a task on another machine: the command's URLs pulled into this machine's mirror; returns them
    (with whether each is the output) for :func:`push_task_outputs`. Never locks."""
    mirrors = [(Mirror(url), output) for url, output in spec["mirrors"]]
    for m, _ in mirrors:
        m.pull()
    return mirrors


def push_task_outputs(mirrors: list[tuple[Mirror, bool]]) -> list[str]:
    """After a task that succeeded: upload what it wrote under the output URL; returns the uploaded keys.
    Never deletes in the bucket."""
    uploaded: list[str] = []
    for m, output in mirrors:
        if output and not m.pattern:
            m.push(uploaded)
    return uploaded


def fetch_uploaded(keys: list[str]) -> None:
    """Driver side: fetch the keys a task on another machine uploaded into the running command's mirrors
    (recorded as fetched, so the pusher does not upload them back)."""
    for m in _ACTIVE:
        mine = [k for k in keys if k == m.path or k.startswith(m.path + "/")]
        if not mine:
            continue
        with m.state.mutex:
            for k in mine:
                with remote_errors(f"{m.sch}://{k}", "fetching"):
                    info = m.fs.info(k)
                m._fetch(k, info)
            m.state.save()
