"""Move published stores between caches: push, pull, copy, and discard a directory safely.

Publishing (``push_store``) is atomic for readers: into a directory, the store is copied under a temporary name in
the destination's ``partial/`` and renamed; into an object store, every object is uploaded first and the root
``zarr.json`` (with the manifest) last, so a reader that finds the manifest finds every chunk. Pulling checks every
key the source's metadata names, copies into the local cache's ``partial/``, verifies the copy (unless
``MAD_PULL_VERIFY=0``) and renames it into ``stores/``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from .location import KINDS, Location, is_complete, manifest_of, partial_rel, store_files, store_rel

BATCH = 64  # files per concurrent fetch / upload
PULL_VERIFY_ENV = "MAD_PULL_VERIFY"


@dataclass
class Transfer:
    kind: str
    key: str
    source: str
    dest: str
    files: int = 0
    bytes: int = 0
    skipped: bool = False  # the destination already had the complete store

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _local_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def push_store(store_path: str | Path, dest_root: str, log: Callable[[str], None] | None = None) -> Transfer:
    """Publish one complete local store into the cache root ``dest_root`` (a directory or an object store)."""
    src = Path(store_path).expanduser()
    man = manifest_of(src)
    if man is None or "cache_key" not in man:
        if not (src / "zarr.json").exists():
            raise StoreError(f"{src}: not a zarr store")
        raise StoreError(f"{src}: incomplete store (no manifest); only published stores can be pushed")
    kind, key = man.get("kind"), man["cache_key"]
    if kind not in KINDS:
        raise StoreError(f"{src}: unknown store kind {kind!r} in the manifest")
    dest = Location(dest_root)
    dest.check_writable()
    final = dest.child(store_rel(kind, key))
    result = Transfer(kind, key, str(src), final.url)
    if is_complete(final, key):
        result.skipped = True
        return result
    files = [f for f in _local_files(src) if f != "zarr.json"] + ["zarr.json"]  # the manifest lands last
    result.files = len(files)
    result.bytes = sum((src / f).stat().st_size for f in files)
    if dest.local:
        tmp = Path(dest.path(partial_rel(kind, key, "push")))
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, tmp, ignore=lambda d, names: ["zarr.json"] if Path(d) == src else [])
            shutil.copy2(src / "zarr.json", tmp / "zarr.json")
            Path(final.url).parent.mkdir(parents=True, exist_ok=True)
            if Path(final.url).exists() and not is_complete(final, key):
                discard(Path(final.url))  # a leftover without a manifest is never served; replace it
            try:
                os.rename(tmp, final.url)
            except OSError:
                if not is_complete(final, key):
                    raise
                result.skipped = True  # someone else published the same key first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result
    body = files[:-1]
    for i in range(0, len(body), BATCH):  # every chunk and array metadata object first ...
        batch = body[i : i + BATCH]
        final.put_many({f: (src / f).read_bytes() for f in batch})
        if log:
            log(f"push {kind} {key[:12]}: {min(i + BATCH, len(body))}/{len(files)} files")
    final.put_many({"zarr.json": (src / "zarr.json").read_bytes()})  # ... the manifest alone, last
    return result


def copy_store(src: Location, dst_dir: Path) -> tuple[int, int]:
    """Copy a published store (any location) into a new local directory by its known keys; root zarr.json last.

    Every key comes from the source's metadata and is checked (relative, normalised, zarr's characters) before
    anything is fetched or written; each file is fetched with the size bound its array's metadata implies."""
    files = store_files(src)
    base = dst_dir.resolve()
    n = nbytes = 0
    for i in range(0, len(files), BATCH):
        batch = dict(files[i : i + BATCH])
        got = src.cat_many(list(batch), batch)
        for rel, data in got.items():
            if data is None:
                if rel == "zarr.json" or rel.endswith("/zarr.json"):
                    raise StoreError(f"{src.url}/{rel}: missing")
                continue  # a chunk never written: fill value
            p = base / rel
            if not p.resolve().is_relative_to(base):  # checked keys cannot get here; kept as a last guard
                raise StoreError(f"{src.url}: key {rel!r} leaves the store; nothing was published")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            n += 1
            nbytes += len(data)
    return n, nbytes


def pull_verify_default() -> bool:
    """Whether pulls verify the copy before publishing it: yes, unless ``MAD_PULL_VERIFY`` is 0 / false / no / off."""
    return os.environ.get(PULL_VERIFY_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def pull_store(cache, kind: str, key: str, src: Location, verify: bool | None = None, locked: bool = False) -> Transfer:
    """Copy the published store ``src`` into ``cache`` (a :class:`mad_pipeline.cache.Cache`): into its
    ``partial/``, verified (every chunk's checksum and the manifest against the arrays; ``verify=None`` means
    ``MAD_PULL_VERIFY``, on by default), then an atomic rename into ``stores/``. A copy that fails any check is
    removed, never published."""
    if verify is None:
        verify = pull_verify_default()
    final = cache.store_path(kind, key)
    result = Transfer(kind, key, src.url, str(final))
    if not locked:
        with cache.lock(key):
            return pull_store(cache, kind, key, src, verify=verify, locked=True)
    if cache.lookup(kind, key) is not None:
        result.skipped = True
        return result
    if not is_complete(src, key):
        raise StoreError(f"{src.url}: no complete store with key {key}")
    tmp = cache.partial_path(kind, key, "pull")
    try:
        tmp.mkdir(parents=True)
        try:
            result.files, result.bytes = copy_store(src, tmp)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - network and server errors: one clear line, nothing published
            raise StoreError(f"pulling {kind} store {key} from {src.url} failed ({type(e).__name__}: {e}); "
                             f"nothing was published, run again to retry") from None
        if not is_complete(tmp, key):
            raise StoreError(f"{src.url}: the copied store has no manifest for key {key}")
        if verify:
            _verify_copy(tmp, src)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            discard(final)  # not complete (lookup said so above): never served, safe to replace
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _verify_copy(tmp: Path, src: Location) -> None:
    from .verify import verify_store

    rep = verify_store(str(tmp))
    if not rep.ok:
        more = f" (and {len(rep.problems) - 1} more)" if len(rep.problems) > 1 else ""
        raise StoreError(f"{src.url}: the pulled copy fails verification, nothing was published: "
                         f"{rep.problems[0].describe()}{more}")


def discard(path: Path) -> None:
    """Remove a directory by first renaming it aside (so no reader sees it half-deleted under its name)."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
