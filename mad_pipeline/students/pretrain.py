"""Pretrain a ViLT student on the shapes world's image-caption pairs with ViLT's own objectives
(``mad student pretrain``), so that the study distills into an existing vision-language model, as the paper does.

Objectives (ViLT's, Kim et al. 2021), on a batch of scenes a step from the ``student-pretrain`` stream
(:mod:`mad_pipeline.shapes.pairs`: never a ``shift`` colour+shape pair):

- **image-text matching** (ITM): each image with its caption or, with probability ``negative_fraction``, a caption
  that does not match -- the scene's own caption with one attribute changed (a *hard* negative) or another scene's
  caption (an *easy* one). The head is ViLT's ITM head, ``Linear(H, 2)`` on the pooled output (``itm_score``).
  Our schedule, not ViLT's (ViLT starts from ViT weights; ours starts from nothing, and at this size unscheduled ITM
  never leaves chance -- see ``Loop.step`` and docs/shapes.md): MLM alone for the first ``itm_start`` of the steps
  (ITM learns only on a model whose MLM already reads the image), then MLM + ITM with the ITM loss weighted by
  ``itm_weight``, on easy negatives only until ITM's batch accuracy (mean of the last ``GATE_WINDOW`` steps)
  reaches ``hard_gate``; from then on the hard negatives' share grows to ``hard_fraction`` over ``hard_ramp`` of
  the steps (a curriculum on the measured accuracy, not on the step count).
- **whole places** (``place_mask`` > 0; ours, in the spirit of ViLT's whole-word masking): in that share of the
  captions, one place phrase's words (``top left``) are all masked besides (:func:`mask_place`).
- **the image phase** (``cell_steps`` > 0; our own addition): before the schedule, ``cell_steps`` steps of the
  image alone (an empty text) with a linear probe on the image's CLS token predicting every cell's shape and colour;
  the probe's loss then fades out over the first quarter of the schedule, and the probe is dropped. ViLT starts
  from an ImageNet-trained ViT, whose patches already say what they show and where; ours starts from nothing (see
  ``Loop.cell_step``). It uses the world's object labels, never a task's labels or a teacher's features.
- **masked language modelling** (MLM): ``mask_prob`` (15%) of each matching caption's tokens, at least one, chosen
  for prediction, BERT's way: 80% replaced by ``[MASK]``, 10% by a random token, 10% kept. The head is transformers'
  ``ViltForMaskedLM`` head (``mlm_score``: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings), run on
  the chosen positions only. As in ViLT, MLM and ITM are two forward passes (masked text for MLM, whole text for ITM).

No task labels and no teacher features. The result is saved in transformers' ``ViltForMaskedLM`` layout (the layout
of ``dandelin/vilt-b32-mlm``): ``config.json`` + ``model.safetensors`` (fp16; ``vilt.*``, ``mlm_score.*`` and the
extra ``itm_score.*``), so ``ViltModel.from_pretrained(directory)`` -- and ``mad distill --pretrained directory`` --
load its backbone. The run is deterministic: the same settings on the same torch build and thread count give the
same bytes.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..shapes.pairs import caption, hard_negative
from ..shapes.train import cell_loss
from ..shapes.world import COLOUR_NAMES, GRID, SHAPES, cell_targets
from .pretrain_data import Pool, make_pool, mask_place, mask_tokens, pixels, tokenize
from .vilt import VILT_CONFIGS, grid_visual_embed, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "training.json"
# recorded and keyed only when not 0 (settings_dict): the students pretrained before they existed keep their keys
OPTIONAL_SETTINGS = ("pos_init_std", "cell_steps", "place_mask", "itm_pooler")
POOLER, ITM_POOLER = "vilt.pooler.", "itm_pooler."  # the backbone's pooler; the same weights saved as the ITM head's
TIED_KEY = "mlm_score.decoder.weight"  # = vilt.embeddings.text_embeddings.word_embeddings.weight, not stored
GATE_WINDOW = 50  # ITM steps whose mean batch accuracy opens the hard negatives' gate
CELL_CLASSES = (len(SHAPES) + 2, len(COLOUR_NAMES) + 1)  # per cell: shape | empty | grey box; colour | none


@dataclass(frozen=True)
class PretrainSettings:
    student: str = "vilt-tiny"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    pool_size: int = 12_800  # distinct training scenes (re-captioned every time they are drawn)
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    mask_prob: float = 0.15
    negative_fraction: float = 0.5
    hard_fraction: float = 0.5
    hard_ramp: float = 0.1  # share of the steps over which the hard negatives' share grows from 0 to hard_fraction
    itm_weight: float = 40.0  # ITM loss multiplier (see ``Loop.step``)
    itm_start: float = 0.5  # share of the steps of MLM alone before ITM joins
    hard_gate: float = 0.8  # ITM batch accuracy (mean of the last GATE_WINDOW steps) that lets hard negatives in
    pos_init_std: float = 0.1  # patch position embedding drawn N(0, std) (0: zeros, as transformers; build_model)
    cell_steps: int = 500  # the image phase before MLM: every cell's contents from the image alone (Loop.cell_step)
    place_mask: float = 0.0  # MLM: share of captions with one whole place ("top left") masked besides (mask_place)
    itm_pooler: bool = True  # save the pooler (trained by ITM alone) as the ITM head's: students draw their own (save)


class PretrainModel(nn.Module):
    """transformers' ``ViltForMaskedLM`` pieces (``vilt`` backbone, ``mlm_score`` head) + ViLT's ITM head."""

    def __init__(self, config):
        super().__init__()
        from transformers import ViltForMaskedLM

        mlm = ViltForMaskedLM(config)
        self.config = config
        self.vilt, self.mlm_score = mlm.vilt, mlm.mlm_score
        self.itm_score = nn.Linear(config.hidden_size, 2)
        nn.init.normal_(self.itm_score.weight, std=config.initializer_range)
        nn.init.zeros_(self.itm_score.bias)

    def encode(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(hidden states ``[text | image CLS | patches in grid order]``, pooled output)."""
        image_embeds, image_mask = grid_visual_embed(self.vilt.embeddings, pixels)
        out = self.vilt(input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds,
                        pixel_mask=image_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output

    def mlm_logits(self, pixels, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at ``positions`` (a boolean (B, L) mask over the text tokens)."""
        hidden, _ = self.encode(pixels, input_ids, attention_mask)
        return self.mlm_score(hidden[:, : input_ids.shape[1]][positions])

    def itm_logits(self, pixels, input_ids, attention_mask) -> torch.Tensor:
        return self.itm_score(self.encode(pixels, input_ids, attention_mask)[1])


def build_model(student: str, seed: int, pos_init_std: float = 0.0) -> PretrainModel:
    """The untrained model. transformers starts ViLT's patch position embedding at zeros (ViLT itself copies a
    pretrained ViT's); ``pos_init_std`` > 0 draws it from N(0, std) instead, so that where a patch lies is as visible
    to the first layer as what it shows (the patch projection's output has a std of about 0.2 on these images)."""
    from transformers import ViltConfig

    torch.manual_seed(seed)
    model = PretrainModel(ViltConfig(**VILT_CONFIGS[student]))
    if pos_init_std > 0:
        with torch.no_grad():
            model.vilt.embeddings.position_embeddings.normal_(0.0, pos_init_std)
    return model


def hard_share(step: int, s: PretrainSettings, gate: int | None) -> float:
    """The share of hard negatives among the non-matching captions at ``step``: 0 before ``gate`` (the step at
    which easy ITM reached ``hard_gate``; ``None``: not yet), then growing linearly to ``hard_fraction`` over
    ``hard_ramp`` of the steps (easy negatives first, as a curriculum)."""
    if gate is None or step < gate:
        return 0.0
    ramp = s.hard_ramp * s.steps
    return s.hard_fraction if ramp <= 0 else s.hard_fraction * min(1.0, (step - gate) / ramp)


def itm_texts(pool: Pool, idx: np.ndarray, s: PretrainSettings, rng: np.random.Generator,
              hard: float) -> tuple[list[str], list[int]]:
    """One text per image: its caption (label 1) or a non-matching one (label 0, a hard one with probability
    ``hard``: see :func:`hard_share`)."""
    texts, labels = [], []
    for i in idx:
        scene = pool.scenes[int(i)]
        if rng.random() >= s.negative_fraction:
            texts.append(caption(scene, rng))
            labels.append(1)
        elif rng.random() < hard:
            texts.append(hard_negative(scene, rng))
            labels.append(0)
        else:
            j = int(rng.integers(len(pool.scenes) - 1))
            j += j >= int(i)  # another scene
            texts.append(caption(pool.scenes[j], rng))
            labels.append(0)
    return texts, labels


# ----------------------------------------------------------------------------------------------------------- training
def lr_at(step: int, s: PretrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * t))


def optimizer(model: nn.Module, s: PretrainSettings, extra: tuple = ()) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (not biases, norms or embeddings, nor the ``extra`` parameters)."""
    decay, no_decay = [], list(extra)
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embeddings" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.98), eps=1e-6)


class Loop:
    """One pretraining run's state: the model, its optimizer, the pool and the one generator that draws, in order,
    each step's batch, captions, negatives and masks (the same settings see the same draws)."""

    def __init__(self, s: PretrainSettings, pool: Pool, model: PretrainModel | None = None):
        self.s, self.pool = s, pool
        self.model = build_model(s.student, s.seed, s.pos_init_std) if model is None else model
        self.model.train()
        self.tokenizer = load_tokenizer(None)
        self.max_length = self.model.config.max_position_embeddings
        self.probe = self.cells = None
        if s.cell_steps > 0:  # the image phase's probe (dropped afterwards) and its labels
            self.probe = nn.Linear(self.model.config.hidden_size, GRID * GRID * sum(CELL_CLASSES))
            self.cells = torch.from_numpy(np.stack([cell_targets(scene) for scene in pool.scenes]))
            self.cell_rng = np.random.default_rng([s.seed, 12])
        self.opt = optimizer(self.model, s, () if self.probe is None else tuple(self.probe.parameters()))
        self.rng = np.random.default_rng([s.seed, 11])
        self.order, self.cursor = self.rng.permutation(len(pool.scenes)), 0
        self.itm_from = int(round(s.itm_start * s.steps))  # the first step with ITM
        self.gate: int | None = None  # the step from which hard negatives come in (see hard_share)
        self.accuracies: list[float] = []  # ITM batch accuracies of the last GATE_WINDOW ITM steps

    def _batch(self) -> np.ndarray:
        if self.cursor + self.s.batch_size > len(self.order):
            self.order, self.cursor = self.rng.permutation(len(self.pool.scenes)), 0
        idx = self.order[self.cursor: self.cursor + self.s.batch_size]
        self.cursor += self.s.batch_size
        return idx

    def losses(self, idx: np.ndarray, mlm: bool = True, itm: bool = True, hard: float = 0.0) -> dict[str, torch.Tensor]:
        """The objectives on the images ``idx``: ``mlm`` (masked captions) and ``itm``, ``itm_acc`` (matching and
        non-matching captions, a share ``hard`` of the latter hard). The generator draws, in order, the captions and
        masks, then the ITM texts; an objective left out draws nothing."""
        s, model = self.s, self.model
        px = pixels(self.pool.images[torch.from_numpy(idx)])
        out = {}
        if mlm:
            ids, att, maskable = tokenize(self.tokenizer, [caption(self.pool.scenes[int(i)], self.rng) for i in idx],
                                          self.max_length)
            masked, chosen = mask_tokens(ids, maskable, s.mask_prob, self.tokenizer, self.rng)
            if s.place_mask > 0:
                mask_place(ids, masked, chosen, self.tokenizer, self.rng, s.place_mask)
            out["mlm"] = F.cross_entropy(model.mlm_logits(px, masked, att, chosen), ids[chosen])
        if itm:
            texts, labels = itm_texts(self.pool, idx, s, self.rng, hard)
            t_ids, t_att, _ = tokenize(self.tokenizer, texts, self.max_length)
            logits = model.itm_logits(px, t_ids, t_att)
            target = torch.tensor(labels)
            out["itm"] = F.cross_entropy(logits, target)
            out["itm_acc"] = (logits.argmax(1) == target).float().mean()
        return out

    def cell_loss(self, idx: np.ndarray) -> torch.Tensor:
        """The probe's loss on the images ``idx`` with an empty text: every cell's shape (or empty, or the grey box)
        and colour (or none), from the image's CLS token (as a ViT classifies; the pooled output, which reads the
        text's CLS, stays at the classes' base rates for hundreds of steps)."""
        n = len(idx)
        ids, att, _ = tokenize(self.tokenizer, [""] * n, self.max_length)
        hidden, _ = self.model.encode(pixels(self.pool.images[torch.from_numpy(idx)]), ids, att)
        return cell_loss(self.probe(hidden[:, ids.shape[1]]), self.cells[torch.from_numpy(idx)])

    def cell_step(self, step: int) -> dict[str, float]:
        """A step of the image phase (``cell_steps``, before the schedule): the probe of :meth:`cell_loss` on a
        batch of the pool, the learning rate warming up over ``warmup`` steps (at most half the phase). ViLT starts
        from a ViT pretrained on labelled images; ours starts from nothing, and MLM alone never learns where things
        are (place words stay at their text-only accuracy): this phase makes the image's CLS token say what
        lies in each cell first, as the teacher's training does (``shapes/train.py``)."""
        warm = max(1, min(self.s.warmup, self.s.cell_steps // 2))
        idx = self.cell_rng.choice(len(self.pool.scenes), size=self.s.batch_size, replace=False)
        loss = self.cell_loss(idx)
        self.update(loss, self.s.lr * min(1.0, (step + 1) / warm))
        return {"phase": "cell", "cell": loss.item()}

    def update(self, loss: torch.Tensor, lr: float) -> None:
        """One AdamW step on ``loss`` at learning rate ``lr``."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self, step: int) -> dict[str, float]:
        """One step of the schedule (see the module's docstring); returns the losses (ITM's are ln 2 and 0.5, chance,
        while it is not trained)."""
        itm, hard = step >= self.itm_from, hard_share(step, self.s, self.gate)
        idx = self._batch()
        out = self.losses(idx, itm=itm, hard=hard)
        # ITM's gradient on the shared weights is ~40x smaller than MLM's (bench/pretrain_itm.py --grad-norms), and
        # AdamW scales each weight's step by the size of its summed gradient: unweighted, ITM moves the backbone at
        # about 1/40 of the learning rate and stays at ln 2.
        loss = out["mlm"] + self.s.itm_weight * out["itm"] if itm else out["mlm"]
        fade = self.s.steps // 4  # the image phase's probe fades out over the first quarter
        cell = self.cell_loss(idx) if self.probe is not None and step < fade else None
        if cell is not None:
            loss = loss + (1 - step / fade) * cell
        self.update(loss, lr_at(step, self.s))
        info = {"loss": loss.item(), "mlm": out["mlm"].item(), "itm": math.log(2.0), "itm_acc": 0.5}
        if cell is not None:
            info["cell"] = cell.item()
        if itm:
            info |= {"itm": out["itm"].item(), "itm_acc": out["itm_acc"].item()}
            self.accuracies = (self.accuracies + [info["itm_acc"]])[-GATE_WINDOW:]
            if (self.gate is None and len(self.accuracies) == GATE_WINDOW
                    and sum(self.accuracies) / GATE_WINDOW >= self.s.hard_gate):
                self.gate = step + 1
        info["hard"] = hard  # the gate opens for the next step at the earliest
        return info


def train(s: PretrainSettings, pool: Pool, progress: Callable[[int, dict], None] | None = None,
          model: PretrainModel | None = None) -> tuple[PretrainModel, list[dict]]:
    """The image phase (``s.cell_steps``, entries ``{"phase": "cell", "cell": loss}``) then ``s.steps`` steps of the
    schedule; returns the model (eval mode) and the per-step losses. ``progress(done, info)`` counts both phases."""
    loop = Loop(s, pool, model)
    history = []
    for step in range(s.cell_steps + s.steps):
        info = loop.cell_step(step) if step < s.cell_steps else loop.step(step - s.cell_steps)
        history.append(info)
        if progress is not None:
            progress(step + 1, info)
    return loop.model.eval(), history


# ----------------------------------------------------------------------------------------------------------- files
def save(model: PretrainModel, out: Path, meta: dict[str, Any], itm_pooler: bool = False) -> Path:
    """``config.json`` + fp16 ``model.safetensors`` (transformers' ``ViltForMaskedLM`` layout, plus ``itm_score.*``)
    + ``training.json`` (``meta``, the library versions and the weights' sha256). ``itm_pooler``: the pooler, which
    only ITM trains, is stored as part of the ITM head (``itm_pooler.*``), so a student that loads the backbone has
    no pooler in the file and starts its own (a strong ITM can leave a pooled output that hardly varies between
    images); :func:`load` puts it back."""
    import transformers
    from safetensors.torch import save_file

    from ..hashing import sha256_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items() if k != TIED_KEY}
    if itm_pooler:
        state = {(ITM_POOLER + k[len(POOLER):] if k.startswith(POOLER) else k): v for k, v in state.items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(dict(sorted(state.items())), str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    config = model.config.to_dict()
    for k in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(k, None)
    config["architectures"] = ["ViltForMaskedLM"]
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = {**meta, "sha256": sha256_file(out / WEIGHTS_FILE), "torch": torch.__version__,
              "transformers": transformers.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine()}
    (out / META_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def load(directory: str | Path) -> PretrainModel:
    """A saved pretraining model with its heads, in fp32 and eval mode."""
    from safetensors.torch import load_file
    from transformers import ViltConfig

    d = Path(directory)
    cfg = json.loads((d / CONFIG_FILE).read_text())
    model = PretrainModel(ViltConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    state = {(POOLER + k[len(ITM_POOLER):] if k.startswith(ITM_POOLER) else k): v.float()
             for k, v in load_file(str(d / WEIGHTS_FILE)).items()}
    model.load_state_dict(state, strict=False)  # the tied decoder weight is the word embeddings
    model.mlm_score.decoder.weight = model.vilt.embeddings.text_embeddings.word_embeddings.weight
    return model.eval()


def drop_unset(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the ``OPTIONAL_SETTINGS`` that are unset (falsy): students pretrained before those settings
    existed keep their keys and records."""
    return {k: v for k, v in settings.items() if k not in OPTIONAL_SETTINGS or v}


def settings_dict(s: PretrainSettings) -> dict[str, Any]:
    """The settings as recorded and keyed (:func:`drop_unset`)."""
    return drop_unset(asdict(s))


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


__all__ = ["CELL_CLASSES", "CONFIG_FILE", "GATE_WINDOW", "META_FILE", "OPTIONAL_SETTINGS", "WEIGHTS_FILE", "Loop",
           "Pool", "PretrainModel", "PretrainSettings", "build_model", "drop_unset", "hard_share", "itm_texts", "load",
           "lr_at", "make_pool", "mask_place", "mask_tokens", "pixels", "save", "settings_dict", "timed", "tokenize",
           "train"]
