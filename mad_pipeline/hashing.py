"""Content hashes and canonical JSON: the basis of every cache key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Hash of a directory: relative file names and their contents, in sorted order."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_weights(path: str | os.PathLike) -> str:
    """sha256 of a weight file or directory, memoised next to the file's size and mtime.

    Real teachers are large (ViT-L-14 is 1.7 GB); the memo lives in the user cache dir so a rerun does not re-read
    the weights only to find its cache key.
    """
    p = Path(path).resolve()
    if p.is_dir():
        return sha256_tree(p)
    st = p.stat()
    memo_dir = Path(os.environ.get("MAD_HASH_MEMO", _default_memo_dir()))
    memo = memo_dir / (sha256_text(f"{p}|{st.st_size}|{st.st_mtime_ns}") + ".sha256")
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = sha256_file(p)
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest


def _default_memo_dir() -> str:
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("mad"), "weight-hashes")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the same object always gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_key(obj: Any) -> str:
    """The cache key of anything JSON-serialisable: sha256 of its canonical JSON."""
    return sha256_text(canonical_json(obj))


def hash_of_set(hashes) -> str:
    """Order-independent digest of a collection of content hashes (duplicates collapse)."""
    h = hashlib.sha256()
    for x in sorted(set(hashes)):
        h.update(x.encode())
        h.update(b"\n")
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """Dicts, lists and tuples with Paths turned into strings, ready for ``json.dumps`` / ``canonical_json``."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
