"""What a checkpoint holds, read without building a model: its tensors' shapes, and a digest of its tensor contents.

The digest is the sha256 over the checkpoint's tensors in name order, each as (name, dtype, shape, bytes), after
the same unwrapping open_clip's loader does (a ``{"state_dict": ...}`` wrapper, ``module.`` prefixes). The same
weights saved as ``.safetensors``, as a ``torch.save`` file (``.pt`` / ``.bin`` / ``.pth``) or inside an open_clip
local directory therefore give one digest, whatever the container's bytes. safetensors files are read tensor by
tensor; torch files are memory-mapped (``torch.load(weights_only=True, mmap=True)``), never unpickled beyond
plain tensors. Digests are memoised by the file's real path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import TeacherError
from ..hashing import canonical_json, content_key
from ..jsonio import save_memo

SAFETENSORS = ".safetensors"


def _name(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _torch_state_dict(path: Path) -> dict:
    import torch

    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TeacherError(f"{path}: not a state dict (a {type(obj).__name__})")
    return {_name(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _tensors(path: Path, check=None) -> Iterator[tuple[str, object]]:
    """(name, tensor) in name order, loaded one at a time where the container allows it. ``check`` is called with
    the shapes first (before any tensor is read)."""
    if path.suffix == SAFETENSORS:
        import safetensors

        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                names = {_name(k): k for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
                if check is not None:
                    check({n: list(f.get_slice(k).get_shape()) for n, k in names.items()})
                for n in sorted(names):
                    yield n, f.get_tensor(names[n])
        except (OSError, safetensors.SafetensorError) as e:
            raise TeacherError(f"{path}: not a readable safetensors file ({e})") from None
        return
    sd = _torch_state_dict(path)
    if check is not None:
        check({k: list(v.shape) for k, v in sd.items()})
    for n in sorted(sd):
        yield n, sd[n]


def tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Each tensor's shape, by name (safetensors: from the header only; torch files: memory-mapped)."""
    p = Path(path)
    if p.suffix == SAFETENSORS:
        import safetensors

        try:
            with safetensors.safe_open(str(p), framework="pt") as f:
                return {_name(k): list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (OSError, safetensors.SafetensorError) as e:
            raise TeacherError(f"{p}: not a readable safetensors file ({e})") from None
    return {k: list(v.shape) for k, v in _torch_state_dict(p).items()}


def _compute(path: Path, check=None) -> dict:
    import torch

    h = hashlib.sha256()
    shapes: dict[str, list[int]] = {}
    for name, t in _tensors(path, check):
        shapes[name] = list(t.shape)
        h.update(canonical_json([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode() + b"\0")
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    if not shapes:
        raise TeacherError(f"{path}: the checkpoint holds no tensors")
    return {"sha256": h.hexdigest(), "shapes": shapes}


def tensor_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None, check=None) -> dict:
    """``{"sha256": digest of the tensor contents, "shapes": {name: shape}}`` of a checkpoint file, memoised under
    ``memo_dir`` by (real path, size, mtime) so a later run does not read the weights again. ``check(shapes)``
    runs before the contents are read (a wrong architecture is refused without hashing gigabytes)."""
    p = Path(os.path.realpath(path))
    try:
        st = p.stat()
    except OSError as e:
        raise TeacherError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    memo = Path(memo_dir) / f"{content_key([str(p), st.st_size, st.st_mtime_ns])}.json" if memo_dir else None
    if memo is not None:
        try:
            got = json.loads(memo.read_text())
            if isinstance(got, dict) and "sha256" in got and "shapes" in got:
                if check is not None:
                    check(got["shapes"])
                return got
        except (OSError, json.JSONDecodeError):
            pass
    got = _compute(p, check)
    if memo is not None:
        save_memo(memo, got)
    return got
