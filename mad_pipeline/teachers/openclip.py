"""open_clip teachers: CLS + patch tokens after ``ln_post`` and text tokens after ``ln_final``, via the library's own
``forward_intermediates``; weights through ``open_clip.create_model_and_transforms`` (hub tag, file or ``local-dir:``).

:func:`resolve_source` says what a teacher is made of (architecture config, weight file, preprocessing) without
building it, and :func:`clip_identity` turns that into the identity cache keys use; :class:`OpenClipTeacher` builds
exactly that source.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TeacherError
from ..hashing import sha256_file
from .arch import check_clip
from .base import TextBatch, autocast
from .dense import dense_support, last_block_input, value_path
from .digest import tensor_digest, tensor_shapes


@dataclass(frozen=True)
class ClipSource:
    """What an open_clip teacher is made of, known without building it: the architecture open_clip builds
    (a config name, or ``local-dir:DIR`` whose ``open_clip_config.json`` holds it), the weight file loaded into it,
    and the preprocessing (open_clip's ``PreprocessCfg`` fields; the size is the vision config's)."""

    teacher: str
    model_name: str
    model_cfg: dict
    preprocess: dict
    checkpoint: str | None  # None: random initialisation (a local-dir without weights)
    where: str  # how the user named the weights, for messages
    expects: str  # the teacher's own architecture: its config name or local-dir
    expected_cfg: dict

    def check_shapes(self, shapes: dict[str, list[int]]) -> None:
        """One line when the checkpoint is another architecture than the teacher's (by its tensor shapes)."""
        check_clip(shapes, self.expected_cfg, self.where, self.teacher, self.expects)


def _preprocess(overlay: dict | None) -> dict:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    return merge_preprocess_dict(asdict(PreprocessCfg()), overlay or {})


def _read_local_dir(d: Path, what: str) -> tuple[dict, dict]:
    """(model_cfg, preprocess) of an open_clip local directory."""
    try:
        cfg = json.loads((d / "open_clip_config.json").read_text())
        return cfg["model_cfg"], _preprocess(cfg.get("preprocess_cfg"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise TeacherError(f"{what}: not an open_clip local directory ({d / 'open_clip_config.json'}: "
                           f"{type(e).__name__}: {e})") from None


def _teacher_config(model: str, pretrained: str | None) -> tuple[dict, dict]:
    """The teacher's own architecture and preprocessing (a registered config name or its ``local-dir:``).

    A pretrained tag's own settings apply as open_clip's tag records them: its preprocessing (mean, std,
    interpolation, resize mode) and its activation (``quick_gelu``: the OpenAI weights were trained with QuickGELU,
    so ``ViT-B-32`` + ``openai`` is the architecture of ``ViT-B-32-quickgelu``), also when ``--weights`` gives the
    file. The same weights under ``clip-vit-b32`` and ``open_clip:ViT-B-32/openai`` are thus one identity."""
    import open_clip

    if model.startswith("local-dir:"):
        return _read_local_dir(Path(model[len("local-dir:") :]), model)
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise TeacherError(f"open_clip has no model config {model!r}")
    tag = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    if tag.get("quick_gelu"):
        cfg = {**cfg, "quick_gelu": True}
    return cfg, _preprocess(tag)


def _download(model: str, pretrained: str | None, flag: str) -> str:
    import open_clip

    if not pretrained:
        raise TeacherError(f"teacher model {model} has no pretrained tag; pass {flag} PATH")
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise TeacherError(f"open_clip has no pretrained tag {pretrained!r} for {model}")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherError(
            f"could not download {model}/{pretrained} weights ({first[:160]}); "
            f"offline? pass {flag} PATH to a local checkpoint"
        ) from None
    if not path:
        raise TeacherError(f"could not download {model}/{pretrained} weights; pass {flag} PATH")
    return path


def resolve_source(teacher: str, model: str, pretrained: str | None, weights: str | None,
                   flag: str = "--weights") -> ClipSource:
    """Where the architecture, weights and preprocessing of teacher ``teacher`` come from, without building it.

    ``weights``: a checkpoint file (loaded into the teacher's own architecture, also for a teacher shipped as a
    local directory), an open_clip local directory (``local-dir:DIR`` or ``DIR``: its config, preprocessing and
    weight file; a directory without ``open_clip_config.json`` gives only its weight file), or None (the
    teacher's own: its local directory or open_clip's hub download)."""
    own_cfg, own_pre = _teacher_config(model, pretrained)
    own = {"expects": model, "expected_cfg": own_cfg}
    if not weights:
        if model.startswith("local-dir:"):
            ckpt = _local_dir_checkpoint(Path(model[len("local-dir:") :]))
            return ClipSource(teacher, model, own_cfg, own_pre, ckpt and str(ckpt), model, **own)
        ckpt = _download(model, pretrained, flag)
        return ClipSource(teacher, model, own_cfg, own_pre, ckpt, f"{model}/{pretrained}", **own)
    is_dir_ref = weights.startswith("local-dir:")
    path = Path(weights[len("local-dir:") :] if is_dir_ref else weights)
    if is_dir_ref and not path.is_dir():
        raise TeacherError(f"{flag} {weights}: directory not found")
    if not path.exists():
        raise TeacherError(f"{flag} {weights}: file not found")
    where = f"{weights} ({flag})"
    if path.is_dir():
        ckpt = _local_dir_checkpoint(path)
        if (path / "open_clip_config.json").is_file():
            cfg, pre = _read_local_dir(path, f"{flag} {weights}")
            return ClipSource(teacher, f"local-dir:{path}", cfg, pre, ckpt and str(ckpt), where, **own)
        if ckpt is None:
            raise TeacherError(f"{flag} {weights}: no open_clip_config.json and no weight file in the directory")
        return ClipSource(teacher, model, own_cfg, own_pre, str(ckpt), where, **own)
    return ClipSource(teacher, model, own_cfg, own_pre, str(path), where, **own)


def clip_identity(source: ClipSource, precision: str, digest: dict | None) -> dict[str, dict[str, Any]]:
    """Per-tower identity: the architecture config, the tensor digest of the weights, the preprocessing (image) or
    the tokenizer (text), and the compute precision. ``digest``: :func:`digest.tensor_digest` of the checkpoint."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if digest is not None:
        source.check_shapes(digest["shapes"])
    weights = digest["sha256"] if digest is not None else "random-init"
    size = source.model_cfg.get("vision_cfg", {}).get("image_size", CLIPVisionCfg.image_size)
    pre = source.preprocess
    preprocess = {"image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
                  "mean": [float(x) for x in pre["mean"]], "std": [float(x) for x in pre["std"]],
                  "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]}
    context = int(source.model_cfg.get("text_cfg", {}).get("context_length", CLIPTextCfg.context_length))
    tokenizer = _tokenizer_identity(open_clip.get_tokenizer(source.model_name), context)
    base = {"family": "open_clip", "arch": source.model_cfg, "weights_sha256": weights}
    return {"image": {**base, "preprocess": preprocess, "precision": precision},
            "text": {**base, "tokenizer": tokenizer, "precision": precision}}


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


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns that a model built without weights is random; ours are loaded right after."""

    class _Drop(logging.Filter):
        def filter(self, record):
            return "Model initialized randomly" not in record.getMessage()

    f = _Drop()
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


class _Preprocess:
    """Picklable wrapper around open_clip's eval transform (runs in DataLoader workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


class OpenClipTeacher:
    """Both towers of an open_clip CLIP model. Frozen, eval mode."""

    def __init__(self, source: ClipSource, device, precision: str):
        import open_clip

        self.name = source.teacher
        self.source = source
        self.model_name = source.model_name
        self.device = device
        self.precision = precision
        if source.checkpoint:
            source.check_shapes(tensor_shapes(source.checkpoint))  # a wrong architecture is one line
        try:
            if source.model_name.startswith("local-dir:"):  # its config; the weights are loaded below
                with _quiet_random_init():
                    clip, _, preprocess = open_clip.create_model_and_transforms(source.model_name,
                                                                                load_weights=False, device=device)
                if source.checkpoint:
                    open_clip.load_checkpoint(clip, source.checkpoint, weights_only=True)
            else:  # the tag's activation and preprocessing, as in the identity (see _teacher_config)
                pre = source.preprocess
                clip, _, preprocess = open_clip.create_model_and_transforms(
                    source.model_name, pretrained=source.checkpoint, device=device, weights_only=True,
                    force_quick_gelu=bool(source.model_cfg.get("quick_gelu")),
                    image_mean=tuple(pre["mean"]), image_std=tuple(pre["std"]),
                    image_interpolation=pre["interpolation"], image_resize_mode=pre["resize_mode"])
            self.tokenizer = open_clip.get_tokenizer(source.model_name)
        except TeacherError:
            raise
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TeacherError(f"could not load teacher {self.name} from {source.where}: {msg[:200]}") from None
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
        self._identity: dict | None = None

    # ---------------------------------------------------------------- identity
    def _identities(self) -> dict:
        if self._identity is None:  # the same identity the cache keys use (read from the files, not the model)
            digest = tensor_digest(self.source.checkpoint, None) if self.source.checkpoint else None
            self._identity = clip_identity(self.source, self.precision, digest)
        return self._identity

    def image_identity(self) -> dict[str, Any]:
        return self._identities()["image"]

    def text_identity(self) -> dict[str, Any]:
        return self._identities()["text"]

    # ---------------------------------------------------------------- image tower
    def crop_box(self, width: int, height: int):
        return _crop_box(self.resize_mode, self.image_size, width, height)

    @torch.no_grad()
    def encode_image_tokens(self, pixels: torch.Tensor, dense: bool = False):
        """``(tokens (B, T, D), pooled (B, E))``; with ``dense`` also ``dense (B, T, E)``, the joint-space features
        of MaskCLIP's value path (:mod:`.dense`), from the same forward."""
        pixels = pixels.to(self.device, non_blocking=True)
        visual = self.model.visual
        if dense and (why := dense_support(visual)) is not None:
            raise TeacherError(f"teacher {self.name} has no dense joint-space features: {why}")
        with autocast(self.device, self.precision), \
                (last_block_input(visual) if dense else contextlib.nullcontext()) as seen:
            out = self.model.forward_intermediates(
                image=pixels, image_indices=1, normalize_intermediates=True, normalize=False,
                image_output_fmt="NLC", image_output_extra_tokens=True,
            )
            extra = (value_path(visual, seen[0]).float(),) if dense else ()
        tokens = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)
        return (tokens.float(), out["image_features"].float(), *extra)

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


def _local_dir_checkpoint(d: Path) -> Path | None:
    """The weight file open_clip's ``local-dir:`` loader picks (safetensors first); None if there is none."""
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                 "open_clip_pytorch_model.bin", "pytorch_model.bin", "pytorch_model.pth", "model.pth"):
        if (d / name).exists():
            return d / name
    found = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")) + sorted(d.glob("*.pth"))
    return found[0] if found else None


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
