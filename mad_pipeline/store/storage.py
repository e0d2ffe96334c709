"""Storage options of an image store's token array: ``fp16`` (the default), ``int8``, ``bitround:N``, and
``keep_tokens`` (only each image's top-K tokens by a selection policy, CLS always kept).

The *logical* arrays of a store (what extraction hands the writer and what a reader sees) are always the same:
``tokens (N, T, D)`` float16. An option changes only what is *stored*:

- ``int8``: ``tokens`` int8 plus ``tokens_scale (N, T')`` float32, one symmetric scale per token row
  (``scale = max |x| / 127``, ``q = round(x / scale)``); the reader returns ``q * scale`` as float16, so the error of
  each value is at most ``scale / 2`` (half a step) plus float16's own rounding of the result.
- ``bitround:N``: ``tokens`` float16 through numcodecs' BitRound filter (the mantissa rounded to ``N`` of its 10
  bits, ties to even) before Blosc/Zstd: the reader gets plain float16, exactly the bit-rounded values.
- ``keep_tokens=K``: ``tokens (N, 1 + K, D)`` holds the CLS token and the K patches of each image that rank highest
  under ``keep_policy`` (a teacher-side selection policy, e.g. ``teacher-saliency``: ``cos(patch, CLS)``), in grid
  order, and ``token_index (N, 1 + K)`` int16 their positions in the teacher's full token sequence (0 = CLS, 1 + p
  = patch p row-major). Combines with ``int8`` or ``bitround``.

The default changes nothing: no new array, no manifest field, no new part in the cache key, so every fp16 store's
key and bytes are what they always were. Other options are recorded in the manifest (``storage``) and in the key.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# bitround stores name numcodecs' BitRound in their metadata, on purpose (zarr-python and numcodecs read it); zarr says
# so at every array it opens
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")

TOKEN_INDEX = "token_index"  # positions of the kept tokens (keep_tokens)
TOKEN_SCALE = "tokens_scale"  # per-token scale of int8 tokens
INT8_MAX = 127
DTYPES = ("fp16", "int8", "bitround")
FP16_MANTISSA_BITS = 10


@dataclass(frozen=True)
class Storage:
    """How an image store holds its tokens (see the module docstring); ``Storage()`` is the default fp16."""

    dtype: str = "fp16"  # fp16 | int8 | bitround
    keepbits: int = 0  # bitround: mantissa bits kept (1..10)
    keep_tokens: int = 0  # 0: every token
    keep_policy: str = "teacher-saliency"

    @classmethod
    def parse(cls, storage: str | None = "fp16", keep_tokens: int | None = None,
              keep_policy: str | None = None) -> Storage:
        """From the command line's ``--storage`` / ``--keep-tokens`` / ``--keep-policy`` (one ``InputError`` line
        naming the option when a value is wrong)."""
        text = (storage or "fp16").strip().lower()
        m = re.fullmatch(r"bitround:(\d+)", text)
        if m:
            bits = int(m.group(1))
            if not 1 <= bits <= FP16_MANTISSA_BITS - 1:
                raise InputError(f"--storage {storage}: bitround keeps 1 to {FP16_MANTISSA_BITS - 1} of float16's "
                                 f"{FP16_MANTISSA_BITS} mantissa bits (bitround:{FP16_MANTISSA_BITS} is fp16)")
            dtype = "bitround"
        elif text in ("fp16", "int8"):
            dtype, bits = text, 0
        else:
            raise InputError(f"--storage {storage}: expected fp16, int8 or bitround:N (N = 1..9 mantissa bits)")
        k = 0 if keep_tokens is None else keep_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k > np.iinfo(np.int16).max - 1:
            raise InputError(f"--keep-tokens {keep_tokens}: expected a count of patch tokens >= 1 (0: keep all)")
        policy = keep_policy or "teacher-saliency"
        if k:
            check_keep_policy(policy)
        return cls(dtype, bits, k, policy)

    @classmethod
    def from_manifest(cls, manifest: dict | None) -> Storage:
        """What a manifest records (a value it cannot mean reads as the default's)."""
        rec = (manifest or {}).get("storage") if isinstance(manifest, dict) else None
        if not isinstance(rec, dict):
            return cls()
        dtype = str(rec.get("tokens", "fp16"))
        m = re.fullmatch(r"bitround:(\d{1,2})", dtype)
        keep = rec.get("keep_tokens")
        keep = keep if isinstance(keep, int) and not isinstance(keep, bool) and keep > 0 else 0
        return cls("bitround" if m else (dtype if dtype in DTYPES else "fp16"), int(m.group(1)) if m else 0, keep,
                   str(rec.get("keep_policy", "teacher-saliency")))

    @property
    def default(self) -> bool:
        return self.dtype == "fp16" and not self.keep_tokens

    @property
    def label(self) -> str:
        """``fp16`` / ``int8`` / ``bitround:N`` (the ``--storage`` value)."""
        return f"bitround:{self.keepbits}" if self.dtype == "bitround" else self.dtype

    def describe(self) -> str:
        return self.label + (f", keep {self.keep_tokens} tokens ({self.keep_policy})" if self.keep_tokens else "")

    def record(self) -> dict:
        """The manifest's ``storage`` and the cache key's ``storage`` part (only for a non-default storage)."""
        out: dict = {"tokens": self.label}
        if self.dtype == "int8":
            out["scale"] = "float32 per token: tokens = int8 * tokens_scale"
        if self.keep_tokens:
            out.update(keep_tokens=self.keep_tokens, keep_policy=self.keep_policy)
        return out

    def key_parts(self) -> dict:
        """Extra parts of an image store's cache key: none for the default (its key is unchanged)."""
        return {} if self.default else {"storage": self.record()}

    def stored_tokens(self, num_tokens: int) -> int:
        """Token rows stored per image: all of them, or CLS + the kept patches."""
        return min(num_tokens, 1 + self.keep_tokens) if self.keep_tokens else num_tokens


def check_keep_policy(policy: str) -> None:
    """``--keep-policy``: a registered selection policy that ranks by the teacher's image tokens alone."""
    from ..losses.selection import SELECTION_POLICIES

    p = SELECTION_POLICIES.get(policy)
    usable = sorted(n for n, q in SELECTION_POLICIES.items() if q.side == "teacher" and n not in ("all",)
                    and not getattr(q, "needs_text", False))
    if p is None or p.side != "teacher" or policy == "all" or getattr(p, "needs_text", False):
        why = "unknown policy" if p is None else "it does not rank an image's tokens by the teacher's image alone"
        raise InputError(f"--keep-policy {policy}: {why}; choose one of {', '.join(usable)}")


# ---------------------------------------------------------------------------------------------- writing
def keep_indices(tokens: np.ndarray, keep: int, policy: str) -> np.ndarray:
    """``(n, 1 + keep)`` int16 positions of each row's CLS (0) and its ``keep`` best patches under ``policy``, in
    increasing order (ties broken by position, the earlier wins)."""
    import torch

    from ..losses.selection import SELECTION_POLICIES

    n, t = tokens.shape[:2]
    keep = min(keep, t - 1)
    if n == 0:
        return np.zeros((0, 1 + keep), np.int16)
    x = torch.from_numpy(np.ascontiguousarray(tokens)).float()
    mask = torch.ones(n, t - 1, dtype=torch.bool)
    scores = SELECTION_POLICIES[policy].score(x[:, 1:], x[:, 0], mask, None, None, None, t - 1)
    scores = torch.nan_to_num(scores.float(), nan=-np.inf)
    best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep] + 1
    idx = torch.sort(best, dim=1).values
    return np.concatenate([np.zeros((n, 1), np.int64), idx.numpy()], axis=1).astype(np.int16)


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-token int8: ``(q int8 (..., D), scale float32 (...))`` with ``q * scale ~ tokens``."""
    x = np.asarray(tokens, np.float32)
    scale = np.abs(x).max(axis=-1) / INT8_MAX if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (np.asarray(q, np.float32) * np.asarray(scale, np.float32)[..., None]).astype(np.float16)


def encode_tokens(tokens: np.ndarray, storage: Storage) -> dict[str, np.ndarray]:
    """The stored arrays of a batch of logical ``tokens (n, T, D)``. bitround is applied by the array's codec."""
    out: dict[str, np.ndarray] = {}
    tokens = np.asarray(tokens)
    if storage.keep_tokens:
        idx = keep_indices(tokens, storage.keep_tokens, storage.keep_policy)
        tokens = np.take_along_axis(tokens, idx.astype(np.int64)[..., None], axis=1)
        out[TOKEN_INDEX] = idx
    if storage.dtype == "int8":
        out["tokens"], out[TOKEN_SCALE] = quantize_int8(tokens)
    else:
        out["tokens"] = tokens.astype(np.float16, copy=False)
    return out


# ---------------------------------------------------------------------------------------------- reading
class DequantizedTokens:
    """An int8 token array and its per-token scales read as one float16 array: ``tokens[sel]`` is
    ``q[sel] * scale[sel]`` (any basic selection of rows, tokens and channels); everything else (``shape``,
    ``chunks``, ``shards``, ``store_path``, ``metadata``) is the int8 array's."""

    dtype = np.dtype(np.float16)

    def __init__(self, q, scale):
        self._q = q
        self._scale = scale

    def __getattr__(self, attr):
        return getattr(self._q, attr)

    def __len__(self) -> int:
        return len(self._q)

    def __getitem__(self, sel):
        parts = sel if isinstance(sel, tuple) else (sel,)
        if any(p is Ellipsis for p in parts):
            parts = _expand_ellipsis(parts, len(self._q.shape))
        q = np.asarray(self._q[parts])
        scale = np.asarray(self._scale[parts[:2]])
        if len(parts) < 3 or not isinstance(parts[2], (int, np.integer)):
            scale = scale[..., None]  # the channel axis is still there
        return (q.astype(np.float32) * scale).astype(np.float16)


def _expand_ellipsis(parts: tuple, ndim: int) -> tuple:
    i = parts.index(Ellipsis)
    return (*parts[:i], *([slice(None)] * (ndim - len(parts) + 1)), *parts[i + 1 :])


__all__ = ["TOKEN_INDEX", "TOKEN_SCALE", "DequantizedTokens", "Storage", "check_keep_policy", "dequantize_int8",
           "encode_tokens", "keep_indices", "quantize_int8"]
