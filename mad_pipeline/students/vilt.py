"""ViLT students: transformers' ``ViltModel`` backbone + our task heads, with patch tokens in grid order.

Patch order. transformers' ``ViltEmbeddings.visual_embed`` picks the patches it keeps with ``torch.multinomial`` --
also when ``max_image_length=-1``, where it keeps all of them but in a random permutation -- and ``ViltModel``
drops the ``patch_index`` that would say where each token came from. So visual token ``i`` would not be grid cell
``i`` and student patches could not be aligned with teacher patches. We never call ``visual_embed``:
:func:`grid_visual_embed` builds the same embeddings (same patch projection, CLS token, position embeddings,
dropout) for a fully valid square image, in row-major order, and passes them to ``ViltModel`` through its public
``image_embeds`` argument. With every pixel valid and no patch budget, this is exactly ``visual_embed`` up to that
permutation (tests/test_students.py checks it against the ``patch_index`` ``visual_embed`` returns).

Preprocessing is deterministic: shortest-side bicubic resize + centre crop to ``config.image_size`` (open_clip's
convention), normalised with ViLT's mean/std 0.5. Texts: the BERT-uncased WordPiece tokenizer, at most
``config.max_position_embeddings`` tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.align import patch_centers
from .base import READABLE_FORMATS, STUDENT_FORMAT, StudentError, StudentOutput, TextInput, center_crop_box

log = logging.getLogger(__name__)

VILT_MEAN = (0.5, 0.5, 0.5)
VILT_STD = (0.5, 0.5, 0.5)

# ViltConfig keyword arguments per registry name. vilt-b32 is dandelin/vilt-b32-mlm's config (= ViltConfig()).
VILT_CONFIGS: dict[str, dict[str, Any]] = {
    "vilt-tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                      image_size=64, patch_size=8, max_position_embeddings=40, vocab_size=30522,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    # vilt-tiny at half its layers and a quarter of its image tokens (16-pixel patches): about a third of its step
    "vilt-mini": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                      image_size=64, patch_size=16, max_position_embeddings=40, vocab_size=30522,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    # vilt-mini at 3 layers: between the two in cost (about 0.44 of vilt-tiny's step on CPU)
    "vilt-mini-l3": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
                         image_size=64, patch_size=16, max_position_embeddings=40, vocab_size=30522,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    "vilt-b32": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     image_size=384, patch_size=32, max_position_embeddings=40, vocab_size=30522,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


def vilt_presets(image_size: int | None = None) -> list[str]:
    """The ViLT presets' names; with ``image_size``, only those whose images have that many pixels a side."""
    return [name for name, c in VILT_CONFIGS.items() if image_size is None or c["image_size"] == image_size]


# ----------------------------------------------------------------------------------------------- image
class ViltImagePreprocess:
    """PIL image -> ``(pixels (3, S, S), crop_box)``. Picklable, so DataLoader workers can run it."""

    def __init__(self, image_size: int):
        from torchvision import transforms as T

        self.image_size = image_size
        self.mean, self.std = VILT_MEAN, VILT_STD
        self.transform = T.Compose([
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(VILT_MEAN, VILT_STD),
        ])

    def __call__(self, image) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        image = image.convert("RGB")
        return self.transform(image), center_crop_box(self.image_size, image.width, image.height)


def grid_visual_embed(embeddings: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order-preserving replacement for ``ViltEmbeddings.visual_embed`` (every pixel valid, all patches kept).

    Returns ``(embeds (B, 1 + rows * cols, H), mask (B, 1 + rows * cols))``: the image CLS token, then the patches
    in row-major order, each plus its position embedding (bilinearly resized, as ViLT does, when the grid differs
    from the config's), after the embeddings' dropout. The modality-type embedding is added later by ``ViltModel``.
    """
    cfg = embeddings.config
    x = embeddings.patch_embeddings(pixel_values)  # (B, H, rows, cols)
    batch, hidden, rows, cols = x.shape
    side = cfg.image_size // cfg.patch_size
    pos = embeddings.position_embeddings[:, 1:, :].transpose(1, 2).reshape(1, hidden, side, side)
    if (rows, cols) != (side, side):
        pos = F.interpolate(pos, size=(rows, cols), mode="bilinear", align_corners=True)
    x = (x + pos).flatten(2).transpose(1, 2)  # (B, rows * cols, H), token i = cell (i // cols, i % cols)
    cls = embeddings.cls_token + embeddings.position_embeddings[:, :1, :]
    x = torch.cat([cls.expand(batch, -1, -1), x], dim=1)
    x = embeddings.dropout(x)
    mask = torch.ones(batch, x.shape[1], dtype=torch.long, device=x.device)
    return x, mask


# ----------------------------------------------------------------------------------------------- text
BERT_UNCASED = Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "bert-base-uncased"


def load_tokenizer(source: str | Path | None):
    """BERT-uncased WordPiece tokenizer (ViLT's): from ``source`` (a directory with tokenizer files, or a hub id) or,
    when ``source`` is None or a directory without one, the copy shipped with mad (``assets/tokenizers``)."""
    from transformers import BertTokenizerFast

    if source is not None:
        path = Path(source)
        has_files = path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "vocab.txt"))
        if has_files or not path.exists():
            try:
                return BertTokenizerFast.from_pretrained(str(source))
            except OSError as e:
                if not path.exists():
                    raise StudentError(f"could not load a tokenizer from {source} ({e}); offline?") from None
                raise
    return BertTokenizerFast.from_pretrained(str(BERT_UNCASED))


def draw_pooler(dense: nn.Linear, std: float, generator: torch.Generator | None = None) -> None:
    """The pooler's dense layer as transformers initialises it: weights N(0, std), bias zero."""
    with torch.no_grad():
        dense.weight.normal_(0.0, std, generator=generator)
        dense.bias.zero_()


# ----------------------------------------------------------------------------------------------- heads
class ClassifierHead(nn.Sequential):
    """ViLT's VQA head: Linear(H, 2H) -> LayerNorm -> GELU -> Linear(2H, out), on the pooled [CLS] output."""

    def __init__(self, hidden: int, out: int, init_std: float = 0.02):
        super().__init__(nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, out))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------- student
class ViltStudent(nn.Module):
    """A ViLT backbone + one task head (see :mod:`mad_pipeline.students.base` for the interface).

    A classifier task (VQA, SNLI-VE): ``num_classes`` logits from the pooled output. A multiple-choice task (VCR):
    one logit per image-choice pair, reshaped to ``(B, C)``; ``num_classes`` is the number of choices.
    """

    family = "vilt"

    def __init__(self, name: str, task: str, num_classes: int, backbone, tokenizer,
                 labels: list[str] | tuple[str, ...] | None = None):
        super().__init__()
        self.choices = _multiple_choice(task)
        if num_classes < 1:
            raise StudentError(f"num_classes must be positive, got {num_classes}")
        cfg = backbone.config
        if len(tokenizer) > cfg.vocab_size:
            raise StudentError(f"tokenizer has {len(tokenizer)} tokens but the ViLT vocabulary only {cfg.vocab_size}")
        if backbone.pooler is None:
            raise StudentError("the ViLT backbone has no pooler (add_pooling_layer=False)")
        self.name, self.task, self.num_classes = name, task, int(num_classes)
        self.backbone = backbone
        self.tokenizer = tokenizer
        tokenizer.model_max_length = min(tokenizer.model_max_length, cfg.max_position_embeddings)
        self.labels = None if labels is None else tuple(str(x) for x in labels)  # class names, for the saved config
        self.head = ClassifierHead(cfg.hidden_size, 1 if self.choices else self.num_classes, cfg.initializer_range)
        self.image_preprocess = ViltImagePreprocess(cfg.image_size)
        self.pooler_drawn = False  # the pooler was drawn for this run, not loaded (reset_pooler, or absent on load)

    def reset_pooler(self) -> None:
        """Draw the pooler (dense + tanh on the [CLS] token, which the head reads) afresh (:func:`draw_pooler`),
        seeded by the caller's ``torch.manual_seed``."""
        draw_pooler(self.backbone.pooler.dense, self.backbone.config.initializer_range)
        self.pooler_drawn = True

    def created_parameters(self) -> list[nn.Parameter]:
        """The parameters this run creates rather than loads (``train.head_lr_mult`` scales their learning rate):
        the task head, and the pooler when it was drawn."""
        return [*self.head.parameters(), *(self.backbone.pooler.parameters() if self.pooler_drawn else ())]

    # ------------------------------------------------------------------ sizes
    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.backbone.config.image_size

    @property
    def grid(self) -> tuple[int, int]:
        side = self.backbone.config.image_size // self.backbone.config.patch_size
        return (side, side)

    @property
    def max_text_length(self) -> int:
        return self.backbone.config.max_position_embeddings

    # ------------------------------------------------------------------ inputs
    def preprocess_image(self, image) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        return self.image_preprocess(image)

    def tokenize(self, texts: list[str], padding: str = "longest") -> TextInput:
        """``padding``: ``"longest"`` (in the batch) or ``"max_length"`` (always ``max_text_length``)."""
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_text_length,
                             return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
        spans = enc["offset_mapping"].long().clone()
        spans[enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)] = -1
        return TextInput(enc["input_ids"].long(), enc["attention_mask"].long(), spans)

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor, crop_boxes: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, char_spans: torch.Tensor | None = None) -> StudentOutput:
        if input_ids.dim() == 3:  # multiple choice: (B, C, L)
            input_ids, attention_mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
            char_spans = None if char_spans is None else char_spans.flatten(0, 1)
        batch, pairs = pixel_values.shape[0], input_ids.shape[0]
        if pairs != batch:
            if not self.choices or pairs % batch:
                raise StudentError(f"{pairs} texts for {batch} images (only a multiple-choice task pairs each image "
                                   "with C choices)")
            pixel_values = pixel_values.repeat_interleave(pairs // batch, dim=0)
            crop_boxes = crop_boxes.repeat_interleave(pairs // batch, dim=0)
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise StudentError(f"expected {self.image_size}x{self.image_size} pixels, got {tuple(pixel_values.shape)}")
        if input_ids.shape[1] > self.max_text_length:
            raise StudentError(f"{input_ids.shape[1]} text tokens; this student takes at most {self.max_text_length}")

        image_embeds, image_mask = grid_visual_embed(self.backbone.embeddings, pixel_values)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds,
                            pixel_mask=image_mask, return_dict=True)
        hidden = out.last_hidden_state  # [text tokens | image CLS | patches]
        length = input_ids.shape[1]
        logits = self.head(out.pooler_output)
        logits = logits.view(batch, -1) if self.choices else logits
        if char_spans is None:
            char_spans = torch.full((*input_ids.shape, 2), -1, dtype=torch.long, device=input_ids.device)
        return StudentOutput(
            visual_tokens=hidden[:, length + 1:],
            visual_centers=patch_centers(crop_boxes, self.grid),
            text_tokens=hidden[:, :length],
            text_spans=char_spans,
            text_mask=attention_mask.bool(),
            pooled=out.pooler_output,
            logits=logits,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """transformers' layout (``config.json``, ``model.safetensors``, the ``ViltProcessor``'s files, ``README.md``:
        see :mod:`.hf`) + ``student.json``. ``ViltForQuestionAnswering.from_pretrained(directory)`` loads it."""
        from .hf import save_transformers

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_transformers(self, d)
        meta = {"format": STUDENT_FORMAT, "family": self.family, "name": self.name, "task": self.task,
                "num_classes": self.num_classes, "hidden_size": self.hidden_size, "image_size": self.image_size,
                "grid": list(self.grid), "max_text_length": self.max_text_length}
        (d / "student.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, map_location: Any = "cpu") -> ViltStudent:
        """Restores :meth:`save`'s directory, or the layout of earlier versions (``backbone/``, ``tokenizer/``,
        ``heads.safetensors``); safetensors and JSON only. Returned in eval mode."""
        from safetensors.torch import load_file

        d = Path(directory)
        meta = read_student_json(d)
        if meta.get("family") != cls.family:
            raise StudentError(f"{d}: a {meta.get('family')!r} student, not {cls.family!r}")
        if meta["format"] == 1:
            from transformers import ViltModel

            backbone = ViltModel.from_pretrained(str(d / "backbone"), use_safetensors=True)
            head, labels, tokenizer = load_file(str(d / "heads.safetensors")), None, d / "tokenizer"
        else:
            from .hf import load_transformers

            backbone, head, labels = load_transformers(d)
            tokenizer = d
        choices = _multiple_choice(meta["task"])
        student = cls(meta["name"], meta["task"], meta["num_classes"], backbone, load_tokenizer(tokenizer),
                      labels=None if choices or labels is None or len(labels) != meta["num_classes"] else labels)
        try:
            student.head.load_state_dict(head, strict=True)
        except RuntimeError as e:
            raise StudentError(f"{d}: the saved head does not fit ({str(e).splitlines()[0]})") from None
        return student.to(map_location).eval()


def _multiple_choice(task: str) -> bool:
    """Whether ``task`` scores C choice texts per image (one logit each) rather than classifying one text."""
    from ..errors import InputError
    from ..tasks import task_class

    try:
        return task_class(task).multiple_choice
    except InputError:
        from ..tasks import task_names

        raise StudentError(f"unknown task {task!r}; expected one of {', '.join(task_names())}") from None


def read_student_json(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "student.json"
    if not path.exists():
        raise StudentError(f"{directory}: not a saved student (no student.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") not in READABLE_FORMATS:
        raise StudentError(f"{path}: student format {meta.get('format')!r}, this version reads "
                           f"{', '.join(map(str, READABLE_FORMATS))}")
    return meta


def _load_backbone(model_cls, pretrained: str | Path) -> tuple[Any, bool]:
    """``ViltModel.from_pretrained`` in fp32 (whatever the checkpoint's dtype: the shipped shapes-vilt-tiny is fp16),
    without transformers' multi-line load report: a checkpoint with heads (``ViltForMaskedLM``'s ``mlm_score``, an
    ``itm_score``) loads into the backbone by design, so unused head weights are logged at debug level and only
    backbone weights the checkpoint lacks (left at random init) are worth one warning line. Returns the backbone
    and whether its pooler was drawn (a checkpoint without one: the shipped student keeps it with its ITM head)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        backbone, info = model_cls.from_pretrained(str(pretrained), dtype=torch.float32, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    if info.get("unexpected_keys"):
        log.debug("%s: %d weights not used by the backbone (heads): %s", pretrained, len(info["unexpected_keys"]),
                  ", ".join(sorted(info["unexpected_keys"])[:8]))
    lacking = info.get("missing_keys", ())
    missing = sorted(k for k in lacking if not k.startswith("pooler."))
    if missing:
        log.warning("%s: %d backbone weights missing from the checkpoint (left at random init): %s", pretrained,
                    len(missing), ", ".join(missing[:8]))
    return backbone, len(missing) < len(lacking)


def build_vilt(name: str, task: str, num_classes: int, pretrained: str | Path | None = None) -> ViltStudent:
    """A ViLT student. ``pretrained``: a ``save_pretrained`` directory or a hub id (e.g. ``dandelin/vilt-b32-mlm``)
    whose backbone weights (and tokenizer, if it has one) are loaded -- its config wins over ``name``'s; without it,
    ``name``'s config at random init (seeded by the caller's ``torch.manual_seed``). Returned in train mode."""
    from transformers import ViltConfig, ViltModel

    if name not in VILT_CONFIGS:
        raise StudentError(f"unknown ViLT student {name!r}; expected one of {', '.join(VILT_CONFIGS)}")
    _multiple_choice(task)  # an unknown task fails before building (or loading) a backbone
    pooler_drawn = False  # a pretrained checkpoint without a pooler: transformers draws it
    if pretrained is None:
        backbone = ViltModel(ViltConfig(**VILT_CONFIGS[name]))
    else:
        try:
            backbone, pooler_drawn = _load_backbone(ViltModel, pretrained)
        except OSError as e:
            raise StudentError(f"could not load ViLT weights from {pretrained} ({str(e).splitlines()[0][:160]}); "
                               "offline? pass a local save_pretrained directory") from None
        expected = VILT_CONFIGS[name]
        differs = {k: getattr(backbone.config, k) for k, v in expected.items()
                   if k.endswith(("_size", "layers", "heads")) and getattr(backbone.config, k) != v}
        if differs:
            log.info("pretrained ViLT %s differs from %s's config in %s; using the pretrained config",
                     pretrained, name, differs)
    student = ViltStudent(name, task, num_classes, backbone, load_tokenizer(pretrained))
    student.pooler_drawn = pooler_drawn
    return student.train()


__all__ = ["VILT_CONFIGS", "VILT_MEAN", "VILT_STD", "ClassifierHead", "ViltImagePreprocess", "ViltStudent",
           "build_vilt", "grid_visual_embed", "load_tokenizer", "read_student_json"]
