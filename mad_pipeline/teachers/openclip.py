"""open_clip teachers: CLS + patch tokens after ``ln_post`` and text tokens after ``ln_final``, via the library's own
``forward_intermediates``; weights through ``open_clip.create_model_and_transforms`` (hub tag, file or ``local-dir:``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TeacherError
from ..hashing import sha256_file, sha256_weights
from .base import TextBatch, autocast


def _resolve_checkpoint(model: str, pretrained: str | None, weights: str | None) -> tuple[str, str | None]:
    """Returns (model_name for open_clip, checkpoint path or None). Downloads through open_clip when no --weights."""
    import open_clip

    if weights:
        if weights.startswith("local-dir:"):
            path = weights[len("local-dir:") :]
            if not Path(path).is_dir():
                raise TeacherError(f"--weights {weights}: directory not found")
            return weights, path
        if not Path(weights).exists():
            raise TeacherError(f"--weights {weights}: file not found")
        if Path(weights).is_dir():
            return "local-dir:" + weights, weights
        return model, weights
    if not pretrained:
        raise TeacherError(f"teacher model {model} has no pretrained tag; pass --weights PATH")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise TeacherError(f"open_clip has no pretrained tag {pretrained!r} for {model}")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherError(
            f"could not download {model}/{pretrained} weights ({first[:160]}); "
            "offline? pass --weights PATH to a local checkpoint"
        ) from None
    if not path:
        raise TeacherError(f"could not download {model}/{pretrained} weights; pass --weights PATH")
    return model, path


def _crop_box(resize_mode: str, size: int, w: int, h: int) -> tuple[float, float, float, float]:
    """The region of the original image (pixel coordinates) that ends up in the teacher's square input."""
    if resize_mode == "squash":
        return (0.0, 0.0, float(w), float(h))
    if resize_mode == "longest":
        scale = size / max(w, h)
        bw, bh = size / scale, size / scale
        x0, y0 = (w - bw) / 2.0, (h - bh) / 2.0
        return (x0, y0, x0 + bw, y0 + bh)
    # shortest: torchvision Resize(size) then CenterCrop(size)
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    rw, rh = (new_short, new_long) if w <= h else (new_long, new_short)
    left = int(round((rw - size) / 2.0))
    top = int(round((rh - size) / 2.0))
    sx, sy = w / rw, h / rh
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


class _Preprocess:
    """Picklable wrapper around open_clip's eval transform (runs in DataLoader workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


class OpenClipTeacher:
    """Both towers of an open_clip CLIP model. Frozen, eval mode."""

    def __init__(self, name: str, model: str, pretrained: str | None, weights: str | None, device, precision: str):
        import open_clip

        self.name = name
        self.device = device
        self.precision = precision
        model_name, ckpt = _resolve_checkpoint(model, pretrained, weights)
        try:
            if model_name.startswith("local-dir:"):
                clip, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device)
            else:
                clip, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=ckpt, device=device, weights_only=True
                )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except TeacherError:
            raise
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TeacherError(f"could not load teacher {name} from {ckpt}: {msg[:200]}") from None
        clip.eval().requires_grad_(False)
        self.model = clip
        self.preprocess = _Preprocess(preprocess)
        pcfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        patch = clip.visual.patch_size
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.grid = (self.image_size // patch, self.image_size // patch)
        self.num_tokens = 1 + self.grid[0] * self.grid[1]
        self.width = int(clip.visual.transformer.width)
        self.embed_dim = int(clip.visual.output_dim)
        self.text_width = int(clip.transformer.width)
        self.max_length = int(clip.context_length)
        self.resize_mode = pcfg.get("resize_mode", "shortest")
        self.crop_box_fn = functools.partial(_crop_box, self.resize_mode, self.image_size)  # picklable
        self.preprocess_cfg = {
            "image_size": self.image_size,
            "mean": [float(x) for x in pcfg.get("mean", ())],
            "std": [float(x) for x in pcfg.get("std", ())],
            "interpolation": pcfg.get("interpolation", "bicubic"),
            "resize_mode": self.resize_mode,
        }
        if ckpt and Path(ckpt).is_dir():
            ckpt = _local_dir_checkpoint(Path(ckpt))  # the weight file only: the config is hashed as arch/preprocess
        self._weights_sha = sha256_weights(ckpt) if ckpt else "random-init"
        self._arch = _arch_identity(model, model_name)
        self._tokenizer_id = _tokenizer_identity(self.tokenizer, self.max_length)

    # ---------------------------------------------------------------- identity
    def image_identity(self) -> dict[str, Any]:
        return {"family": "open_clip", "arch": self._arch, "weights_sha256": self._weights_sha,
                "preprocess": self.preprocess_cfg, "precision": self.precision}

    def text_identity(self) -> dict[str, Any]:
        return {"family": "open_clip", "arch": self._arch, "weights_sha256": self._weights_sha,
                "tokenizer": self._tokenizer_id, "precision": self.precision}

    # ---------------------------------------------------------------- image tower
    def crop_box(self, width: int, height: int):
        return _crop_box(self.resize_mode, self.image_size, width, height)

    @torch.no_grad()
    def encode_image_tokens(self, pixels: torch.Tensor):
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            out = self.model.forward_intermediates(
                image=pixels, image_indices=1, normalize_intermediates=True, normalize=False,
                image_output_fmt="NLC", image_output_extra_tokens=True,
            )
        tokens = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)
        return tokens.float(), out["image_features"].float()

    # ---------------------------------------------------------------- text tower
    def tokenize(self, texts: list[str]) -> TextBatch:
        ids = self.tokenizer(texts)
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        eot = getattr(self.tokenizer, "eot_token_id", None)
        if eot is not None:  # pad id 0 is also the token "!": length = position of end-of-text + 1
            is_eot = ids == eot
            lengths_t = torch.where(is_eot.any(1), is_eot.int().argmax(1) + 1, torch.full_like(ids[:, 0], ids.shape[1]))
            mask = torch.arange(ids.shape[1])[None, :] < lengths_t[:, None]
        else:
            mask = ids != 0
        lengths = mask.sum(1).numpy().astype(np.int32)
        spans = np.zeros((len(texts), ids.shape[1], 2), np.int32)
        for i, t in enumerate(texts):
            spans[i] = _clip_char_spans(t, self.tokenizer, ids.shape[1], int(lengths[i]) - 2)
        return TextBatch(ids=ids, mask=mask, lengths=lengths, spans=spans)

    @torch.no_grad()
    def encode_text_tokens(self, batch: TextBatch):
        ids = batch.ids.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            out = self.model.forward_intermediates(
                text=ids, text_indices=1, normalize_intermediates=True, normalize=False,
            )
        return out["text_intermediates"][-1].float(), out["text_features"].float()

    @torch.no_grad()
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def _local_dir_checkpoint(d: Path) -> Path:
    """The weight file open_clip's ``local-dir:`` loader picks (safetensors first)."""
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                 "open_clip_pytorch_model.bin", "pytorch_model.bin", "pytorch_model.pth", "model.pth"):
        if (d / name).exists():
            return d / name
    found = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")) + sorted(d.glob("*.pth"))
    return found[0] if found else d


def _arch_identity(model: str, model_name: str) -> dict[str, Any]:
    import json

    import open_clip

    if model_name.startswith("local-dir:"):
        cfg_file = Path(model_name[len("local-dir:") :]) / "open_clip_config.json"
        cfg = json.loads(cfg_file.read_text()).get("model_cfg")
        return {"open_clip_model": "local-dir", "config": cfg}
    return {"open_clip_model": model, "config": open_clip.get_model_config(model)}


def _tokenizer_identity(tokenizer, context_length: int) -> dict[str, Any]:
    ident: dict[str, Any] = {"type": type(tokenizer).__name__, "context_length": context_length}
    bpe = getattr(tokenizer, "bpe_path", None)
    if bpe is None:
        from open_clip.tokenizer import default_bpe

        bpe = default_bpe() if type(tokenizer).__name__ == "SimpleTokenizer" else None
    if bpe and os.path.exists(bpe):
        ident["vocab_sha256"] = sha256_file(bpe)
    name = getattr(tokenizer, "tokenizer_name", None) or getattr(getattr(tokenizer, "tokenizer", None),
                                                                  "name_or_path", None)
    if name:
        ident["name"] = str(name)
    return ident


def _clip_char_spans(text: str, tokenizer, length: int, n_pieces: int) -> np.ndarray:
    """Character spans of CLIP BPE tokens in ``text``; -1 where they cannot be told.

    open_clip's SimpleTokenizer lowercases and collapses whitespace (after ftfy/html clean-up). When that clean-up
    leaves the text's characters unchanged apart from case and spacing, each regex word maps back to a span of the
    original text and each BPE piece to a sub-span; otherwise all spans are -1, no student token aligns with the
    teacher's tokens, and only the pooled text embedding is distilled (see :mod:`mad_pipeline.losses.align`).
    """
    spans = np.full((length, 2), -1, np.int32)
    pat = getattr(tokenizer, "pat", None)
    bpe = getattr(tokenizer, "bpe", None)
    if pat is None or bpe is None or type(tokenizer).__name__ != "SimpleTokenizer":
        return spans
    lowered = text.lower()
    if len(lowered) != len(text):
        return spans
    pos = 1  # after <start_of_text>
    for m in pat.finditer(lowered):
        word = m.group(0)
        if word.strip() == "" or not word.isprintable():
            return np.full((length, 2), -1, np.int32)
        try:
            encoded = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
        except KeyError:
            return np.full((length, 2), -1, np.int32)
        if len(encoded) != len(word):  # non-ASCII: byte pieces do not map to characters one to one
            return np.full((length, 2), -1, np.int32)
        start = m.start()
        for piece in bpe(encoded).split(" "):
            n = len(piece.replace("</w>", ""))
            if pos >= length - 1:  # truncated at the context length
                return spans
            spans[pos] = (start, start + n)
            start += n
            pos += 1
    if pos - 1 != n_pieces:  # the tokenizer's clean-up changed the text: spans would be wrong
        return np.full((length, 2), -1, np.int32)
    return spans
