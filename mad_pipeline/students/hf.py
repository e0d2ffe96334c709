"""A ViLT student's directory in transformers' own layout, so transformers users load it without mad.

``save_transformers(student, directory)`` writes, beside mad's ``student.json``:

``config.json`` + ``model.safetensors``
    exactly what ``ViltForQuestionAnswering.from_pretrained(directory)`` reads: the backbone under ``vilt.*`` and the
    task head under ``classifier.*``. mad's head *is* transformers' VQA head (Linear(H, 2H) -> LayerNorm -> GELU ->
    Linear(2H, out) on the pooled output), so the loaded model computes the same function. ``id2label`` /
    ``label2id`` are the task's class names (VQA: the answer vocabulary; SNLI-VE: entailment, neutral,
    contradiction). A multiple-choice student (VCR) has one output, the score of one image-text pair
    (``id2label = {0: "score"}``): score the C pairs and take the argmax.
tokenizer files + ``preprocessor_config.json`` / ``processor_config.json``
    a ``ViltProcessor``: the BERT-uncased tokenizer (``model_max_length`` = the student's text limit) and a
    ``ViltImageProcessor`` at the student's input size (shortest side resized to ``image_size``, bicubic, scaled to
    [0, 1], normalised with mean = std = 0.5, as mad). It does not centre-crop: mad does (shortest-side resize, then
    a centre crop to ``image_size`` x ``image_size``); crop a non-square image first (``ImageOps.fit``, see the
    model card) to give transformers the input mad gives the student.
``README.md``
    a model card with the inference snippet.

``load_transformers(directory)`` reads the backbone and head back for mad's own :class:`ViltStudent`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from .base import StudentError

HEAD_PREFIX, BACKBONE_PREFIX = "classifier.", "vilt."
SCORE_LABEL = "score"  # the one output of a multiple-choice student


def class_labels(num_outputs: int, labels: list[str] | tuple[str, ...] | None, choices: bool) -> list[str]:
    """The names of the head's outputs: the task's labels, ``score`` for a multiple-choice student, else ``"i"``."""
    if choices:
        return [SCORE_LABEL]
    if labels is not None and len(labels) == num_outputs:
        return [str(x) for x in labels]
    return [str(i) for i in range(num_outputs)]


def save_transformers(student, directory: Path) -> None:
    """Write ``student`` (a :class:`~mad_pipeline.students.vilt.ViltStudent`) into ``directory`` in transformers'
    layout (see the module docstring)."""
    from safetensors.torch import save_file

    d = Path(directory)
    names = class_labels(student.head[-1].out_features, student.labels, student.choices)
    config = copy.deepcopy(student.backbone.config)
    config.architectures = ["ViltForQuestionAnswering"]
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.save_pretrained(d)
    tensors = {BACKBONE_PREFIX + k: v for k, v in student.backbone.state_dict().items()}
    tensors.update({HEAD_PREFIX + k: v for k, v in student.head.state_dict().items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    _save_processor(student, d)
    (d / "README.md").write_text(model_card(student, names))


def _save_processor(student, d: Path) -> None:
    """A ``ViltProcessor`` (tokenizer + image processor at the student's input size). Both transformers' layouts:
    ``processor_config.json`` (5.x) and ``preprocessor_config.json`` + tokenizer files (4.x)."""
    from transformers import ViltImageProcessor, ViltProcessor

    cfg = student.backbone.config
    mean, std = student.image_preprocess.mean, student.image_preprocess.std
    image_processor = ViltImageProcessor(
        do_resize=True, size={"shortest_edge": cfg.image_size}, size_divisor=cfg.patch_size, resample=3,  # bicubic
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean), image_std=list(std),
        do_pad=True)
    ViltProcessor(image_processor=image_processor, tokenizer=student.tokenizer).save_pretrained(d)
    if not (d / "preprocessor_config.json").exists():
        image_processor.save_pretrained(d)
    vocab = getattr(student.tokenizer, "vocab_file", None)
    if not (d / "vocab.txt").exists() and vocab and Path(vocab).is_file():
        (d / "vocab.txt").write_bytes(Path(vocab).read_bytes())  # the slow BertTokenizer of transformers 4.x


def load_transformers(directory: Path) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """``(ViltModel backbone, head state dict, class names)`` from :func:`save_transformers`'s files."""
    from safetensors.torch import load_file
    from transformers import ViltConfig, ViltModel

    d = Path(directory)
    if not (d / "model.safetensors").exists() or not (d / "config.json").exists():
        raise StudentError(f"{d}: config.json or model.safetensors is missing")
    config = ViltConfig.from_pretrained(str(d))
    tensors = load_file(str(d / "model.safetensors"))
    backbone = ViltModel(config)
    own = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    try:
        backbone.load_state_dict(own, strict=True)
    except RuntimeError as e:
        raise StudentError(f"{d / 'model.safetensors'}: not a ViLT backbone of this config "
                           f"({str(e).splitlines()[0]})") from None
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    return backbone, head, labels


# ----------------------------------------------------------------------------------------------- model card
_CLASSIFIER = """```python
from PIL import Image, ImageOps
from transformers import ViltForQuestionAnswering, ViltProcessor

processor, model = ViltProcessor.from_pretrained("{d}"), ViltForQuestionAnswering.from_pretrained("{d}")
image = ImageOps.fit(Image.open("photo.jpg").convert("RGB"), ({s}, {s}), Image.BICUBIC)  # mad's centre crop
logits = model(**processor(image, "{text}", return_tensors="pt")).logits
print(model.config.id2label[logits.argmax(-1).item()])
```"""

_CHOICES = """```python
import torch
from PIL import Image, ImageOps
from transformers import ViltForQuestionAnswering, ViltProcessor

processor, model = ViltProcessor.from_pretrained("{d}"), ViltForQuestionAnswering.from_pretrained("{d}")
image = ImageOps.fit(Image.open("photo.jpg").convert("RGB"), ({s}, {s}), Image.BICUBIC)  # mad's centre crop
choices = ["{text} yes", "{text} no"]  # one text per choice: "question answer" (QA->R: "question answer rationale")
inputs = processor([image] * len(choices), choices, padding=True, truncation=True, return_tensors="pt")
scores = model(**inputs).logits[:, 0]  # one score per image-choice pair
print(choices[scores.argmax().item()])
```"""


def model_card(student, names: list[str]) -> str:
    cfg = student.backbone.config
    side = cfg.image_size
    grid = f"{side // cfg.patch_size}x{side // cfg.patch_size}"
    if student.choices:
        what = ("a multiple-choice scorer: one score per image-text pair (`id2label = {0: \"score\"}`); score each "
                "choice's text with the image and take the argmax")
        snippet = _CHOICES.format(d="path/to/student", s=side, text="why is he smiling?")
    else:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        what = f"a classifier over {len(names)} classes (`config.id2label`: {shown})"
        snippet = _CLASSIFIER.format(d="path/to/student", s=side, text="what colour is the circle?")
    meta = {"library_name": "transformers", "pipeline_tag": "visual-question-answering", "tags": ["vilt", "mad"]}
    return f"""---
{chr(10).join(f"{k}: {json.dumps(v)}" for k, v in meta.items())}
---

# {student.name} student for {student.task}

A ViLT student trained (and distilled from frozen teachers) by mad on the `{student.task}` task: {what}.
It loads with `transformers.ViltForQuestionAnswering` and `ViltProcessor` alone (mad loads it with
`mad_pipeline.students.load_student`, and `mad predict --run RUN --image IMG --text "..."` runs it).

| | |
|---|---|
| input | {side}x{side} RGB pixels, a {grid} grid of {cfg.patch_size}-pixel patches |
| text | BERT-uncased WordPiece, at most {cfg.max_position_embeddings} tokens |
| backbone | hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads |
| head | Linear({cfg.hidden_size}, {2 * cfg.hidden_size}) -> LayerNorm -> GELU -> Linear({2 * cfg.hidden_size}, \
{len(names)}) on the pooled output |

{snippet}

Preprocessing: mad resizes the shortest side to {side} (bicubic) and centre-crops {side}x{side}, normalising with
mean = std = 0.5. The processor resizes the shortest side only, so crop a non-square image first as above
(`ImageOps.fit`); a square image needs no crop.
"""


__all__ = ["class_labels", "load_transformers", "model_card", "save_transformers"]
