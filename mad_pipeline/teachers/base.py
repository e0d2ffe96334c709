"""What stage 1 needs from a frozen teacher: identity (for cache keys), preprocessing, and a token-level forward."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class TextBatch:
    """Tokenised texts: ids/mask for the model, token lengths and character spans (-1 where unknown)."""

    ids: torch.Tensor  # (B, L) int64
    mask: torch.Tensor  # (B, L) bool
    lengths: np.ndarray  # (B,) int32
    spans: np.ndarray  # (B, L, 2) int32


class ImageTeacher(Protocol):
    name: str
    num_tokens: int  # CLS + patches
    width: int  # token width D
    embed_dim: int  # pooled (projected) width E
    grid: tuple[int, int]  # patch grid (rows, cols)

    def identity(self) -> dict[str, Any]: ...
    def preprocess(self, image) -> torch.Tensor: ...
    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]: ...
    def encode_image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TextTeacher(Protocol):
    name: str
    max_length: int
    width: int
    embed_dim: int

    def identity(self) -> dict[str, Any]: ...
    def tokenize(self, texts: list[str]) -> TextBatch: ...
    def encode_text_tokens(self, batch: TextBatch) -> tuple[torch.Tensor, torch.Tensor]: ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA and fp32 on CPU (bf16 autocast is many times slower than fp32 for ViT-L on CPU)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(precision)
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
