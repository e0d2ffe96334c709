"""Train the ``shapes-clip`` teacher: a tiny open_clip CLIP, contrastively, on the shapes world.

Model: open_clip ``CLIP`` (embed 128; ViT 64 px / patch 8 / width 128 / 4 layers; text width 128 / 4 layers /
context 32, the standard CLIP BPE tokenizer so ``open_clip.get_tokenizer`` works unchanged). Saved in open_clip's
``local-dir:`` layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors`` (fp16).

Data: a pool of scenes from the world's ``pretrain`` stream (all 24 colour+shape pairs; disjoint from the dataset
splits' random streams), rendered and JPEG round-tripped exactly like the dataset files.

Loss per step (see :mod:`.captions`): CLIP InfoNCE between images and their scene captions, plus a caption-level
softmax over every hard-negative group that applies to each image (averaged per family so the 300 presence groups
do not drown the 13 colour groups).
"""

from __future__ import annotations

import contextlib
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

from .captions import BANK, scene_caption
from .world import COLOUR_NAMES, GRID, cell_targets, decode_jpeg, encode_jpeg, make_scene, render

MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / STD
STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
PREPROCESS_CFG = {"image_size": 64, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                  "resize_mode": "shortest"}
DESCRIPTION = ("shapes-clip: tiny CLIP (ViT 64px/8, 4+4 layers, width 128, embed 128) trained by "
               "`mad teacher train-shapes` on the shapes world; image 65x128 tokens, text 32x128")
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
META_FILE = "training.json"


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    steps: int = 400
    batch_size: int = 128
    pool_size: int = 12_800  # distinct training images (re-captioned every time they are drawn)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 30
    group_weight: float = 1.0
    precision: str = "bf16"  # bf16 autocast or fp32 (measured on a 2-core CPU: see docs/shapes.md)
    pos_init_std: float = 0.5  # ViT positional-embedding init (see build_model)
    group_fraction: float = 0.5  # share of each family's hard-negative groups used per step (>= 6 each)
    family_weights: tuple[tuple[str, float], ...] = ()  # e.g. (("where", 2.0),): weight in the group loss
    probe_steps: int = 250  # phase 1 (see train): image tower + a per-cell linear probe, dropped afterwards


def build_model(seed: int, pos_init_std: float | None = None):
    """The untrained model; ``pos_init_std`` re-initialises the ViT's learned positional embedding (open_clip
    uses width**-0.5 = 0.09: with it "where" sat at chance for hundreds of steps; 0.5 escapes that plateau)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(MODEL_CFG)))
    if pos_init_std is not None:
        with torch.no_grad():
            model.visual.positional_embedding.normal_(0.0, pos_init_std)
    return model


def normalize_images(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, normalised as the shipped preprocess_cfg does."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_text_short(model, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``model.encode_text`` on ids cut to their longest row (``L`` <= context length).

    CLIP's text tower is causal and pools at the end-of-text token, so padding after it changes nothing: this gives
    the same embeddings as the full 32-token input at a fraction of the cost for short statements.
    """
    L = int((ids != 0).sum(1).max())
    ids = ids[:, :L]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids).to(cast) + model.positional_embedding[:L].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
    x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


@dataclass
class Pool:
    scenes: list
    images: torch.Tensor  # (N, 64, 64, 3) uint8
    labels: torch.Tensor  # (N, n_groups) int64, -1 = group does not apply
    cells: torch.Tensor  # (N, 9, 2) int64: per cell (shape id | 4 empty | 5 grey box, colour id | 6 none)


def make_pool(seed: int, n: int, progress: Callable[[int], None] | None = None) -> Pool:
    scenes, images, labels, cells = [], [], [], []
    for i in range(n):
        scene = make_scene(seed, "pretrain", i)
        scenes.append(scene)
        images.append(decode_jpeg(encode_jpeg(render(scene))))
        labels.append(BANK.labels(scene))
        cells.append(cell_targets(scene))
        if progress is not None:
            progress(1)
    return Pool(scenes, torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)),
                torch.from_numpy(np.stack(cells)))


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_groups(rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Group ids for one step: all of them, or about ``fraction`` of each family (at least 6)."""
    n = len(BANK.groups)
    if fraction >= 1.0:
        return np.arange(n)
    out = []
    for k in range(len(BANK.families)):
        ids = np.flatnonzero(BANK.family_of_group == k)
        take = min(len(ids), max(6, round(len(ids) * fraction)))
        out.append(np.sort(rng.choice(ids, size=take, replace=False)))
    return np.concatenate(out)


def step_statements(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(statement ids the groups need, the groups' (G, 9) index into that list, -1 padded)."""
    idx = BANK.index[groups]
    texts = np.unique(idx[idx >= 0])
    remap = np.full(len(BANK.texts), -1, np.int64)
    remap[texts] = np.arange(len(texts))
    return texts, np.where(idx >= 0, remap[np.clip(idx, 0, None)], -1)


def group_loss(logits: torch.Tensor, labels: torch.Tensor, index: np.ndarray | None = None,
               families: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Softmax over each hard-negative group that applies; mean per family.

    ``logits`` (B, n_statements); ``labels`` (B, n_groups) index of the true statement, -1 = group does not apply;
    ``index`` (n_groups, 9) statement ids per group (-1 padded) and ``families`` (n_groups,) family ids, by default
    all of :data:`BANK`'s. Returns {family: loss}.
    """
    index_t = torch.from_numpy(BANK.index if index is None else index)
    fam_ids = torch.from_numpy(BANK.family_of_group if families is None else families)
    pad = index_t < 0
    g = logits[:, index_t.clamp(min=0)]  # (B, G, 9)
    g = g.masked_fill(pad.unsqueeze(0), float("-inf"))
    valid = labels >= 0
    ce = F.cross_entropy(g[valid], labels[valid], reduction="none")
    fam = fam_ids.unsqueeze(0).expand_as(labels)[valid]
    lab = labels[valid]
    out = {}
    for k, name in enumerate(BANK.families):
        sel = fam == k
        if not bool(sel.any()):
            continue
        if name == "yes/no":  # most presence statements are "no": weigh yes and no groups equally
            parts = [ce[sel & (lab == v)].mean() for v in (0, 1) if bool((sel & (lab == v)).any())]
            out[name] = torch.stack(parts).mean()
        else:
            out[name] = ce[sel].mean()
    return out


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * t))


def cell_loss(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a per-cell probe: ``logits`` (B, 9 * 13) -- per cell, 6 shape classes (:func:`cell_targets`'
    shape, empty, grey box) then 7 colour classes (colour, none) -- against ``cells`` (B, 9, 2)."""
    out = logits.view(logits.shape[0], GRID * GRID, -1)
    return (F.cross_entropy(out[..., :6].reshape(-1, 6), cells[..., 0].reshape(-1))
            + F.cross_entropy(out[..., 6:].reshape(-1, len(COLOUR_NAMES) + 1), cells[..., 1].reshape(-1)))


def _probe_loss(probe, img_raw: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    return cell_loss(probe(img_raw.float()), cells)


def train(s: TrainSettings, progress: Callable[[str, int, int, dict], None] | None = None,
          pool: Pool | None = None):
    """Train and return (model, history). ``progress(phase, done, total, info)`` reports the phases ``render``,
    ``probe`` and ``train``.

    Phase ``probe`` (``probe_steps``, image tower only): a linear probe on the image embedding predicts every cell's
    shape and colour (or empty / grey box). Contrastive training from scratch sat on a plateau for hundreds of
    steps with "where", shape and the grey box's cell at chance: the text side has nothing to align its position and
    shape words to until the image embedding carries that information, and the image side gets no signal until the
    text embeddings of those words differ. The probe (dropped afterwards, not part of the saved model) breaks that
    symmetry in a few hundred cheap steps. Phase ``train`` (``steps``): the contrastive objective of
    :mod:`.captions`, with the probe loss fading out over its first quarter.
    """
    import open_clip

    if s.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, not {s.precision!r}")
    t0 = time.time()
    if pool is None:
        pool = _render_pool(s, progress)
    t_pool = time.time() - t0
    model = build_model(s.seed, s.pos_init_std)
    model.train()
    probe = torch.nn.Linear(MODEL_CFG["embed_dim"], GRID * GRID * (6 + len(COLOUR_NAMES) + 1))
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=MODEL_CFG["text_cfg"]["context_length"])
    loop = _Loop(s, model, probe, _optimizer(model, probe, s), pool, np.random.default_rng([s.seed, 7]), tokenizer,
                 tokenizer(BANK.texts))
    history: list[dict] = []
    t1 = time.time()
    for step in range(s.probe_steps):  # phase 1: image tower + probe
        info = loop.probe_step(step)
        history.append({"phase": "probe", **info})
        if progress is not None:
            progress("probe", step + 1, s.probe_steps, info)
    t2 = time.time()
    for step in range(s.steps):  # phase 2: contrastive
        info = loop.contrastive_step(step)
        history.append({"phase": "train", **info})
        if progress is not None:
            progress("train", step + 1, s.steps, info)
    model.eval()
    t3 = time.time()
    timing = {"pool_s": round(t_pool, 1), "probe_s": round(t2 - t1, 1), "train_s": round(t3 - t2, 1),
              "probe_step_s": round((t2 - t1) / max(1, s.probe_steps), 3),
              "step_s": round((t3 - t2) / max(1, s.steps), 3)}
    return model, {"history": history, "timing": timing}


def _render_pool(s: TrainSettings, progress: Callable[[str, int, int, dict], None] | None) -> Pool:
    """The training pool of ``s``, reporting phase ``render``."""
    done = [0]

    def tick(k):
        done[0] += k
        if progress is not None:
            progress("render", done[0], s.pool_size, {})

    return make_pool(s.seed, s.pool_size, tick)


def _optimizer(model, probe: torch.nn.Module, s: TrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on the model's matrices only (not on biases, norms, embeddings, the logit scale or
    the probe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay + list(probe.parameters()), "weight_decay": 0.0}],
                             lr=s.lr, betas=(0.9, 0.98), eps=1e-6)


class _Batches:
    """Batches of pool indices: passes over the pool in a random order, a new order whenever the next batch would
    run past the end of the current one."""

    def __init__(self, rng: np.random.Generator, n: int, batch_size: int):
        self.rng, self.n, self.batch_size = rng, n, batch_size
        self.order, self.cursor = rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.cursor + self.batch_size > self.n:
            self.order, self.cursor = self.rng.permutation(self.n), 0
        idx = self.order[self.cursor: self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx


@dataclass
class _Loop:
    """What the two phases share. ``rng`` draws, in this order, the batch order, each step's captions and its
    hard-negative groups: every run of the same settings sees the same draws."""

    s: TrainSettings
    model: Any
    probe: torch.nn.Linear
    opt: torch.optim.Optimizer
    pool: Pool
    rng: np.random.Generator
    tokenizer: Any
    stmt_ids: torch.Tensor  # every statement of BANK, tokenized

    def __post_init__(self) -> None:
        self.batches = _Batches(self.rng, len(self.pool.scenes), self.s.batch_size)

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def probe_step(self, step: int) -> dict[str, float]:
        """Phase 1: the image tower and the probe, linear warm-up of the learning rate."""
        s = self.s
        idx = self.batches.next()
        for g in self.opt.param_groups:
            g["lr"] = s.lr * min(1.0, (step + 1) / s.warmup)
        with _autocast(s.precision):
            img_raw = self.model.encode_image(normalize_images(self.pool.images[torch.from_numpy(idx)]))
        loss = _probe_loss(self.probe, img_raw, self.pool.cells[torch.from_numpy(idx)])
        self._update(loss)
        return {"loss": loss.item(), "probe": loss.item()}

    def contrastive_step(self, step: int) -> dict[str, float]:
        """Phase 2: CLIP InfoNCE on captions plus the hard-negative group loss, the probe loss fading out over the
        first quarter of the steps."""
        s, model = self.s, self.model
        idx = self.batches.next()
        caps = [scene_caption(self.pool.scenes[i], self.rng) for i in idx]
        cap_ids = self.tokenizer(caps)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, s)
        images = normalize_images(self.pool.images[torch.from_numpy(idx)])
        groups = sample_groups(self.rng, s.group_fraction)
        texts, gindex = step_statements(groups)
        labels = self.pool.labels[torch.from_numpy(idx)][:, torch.from_numpy(groups)]
        with _autocast(s.precision):
            img_raw = model.encode_image(images)
            img = F.normalize(img_raw, dim=-1)
            cap = encode_text_short(model, cap_ids)
            stmt = encode_text_short(model, self.stmt_ids[torch.from_numpy(texts)])
        img, cap, stmt = img.float(), cap.float(), stmt.float()
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ cap.T
        target = torch.arange(len(idx))
        l_clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        fam = group_loss(scale * img @ stmt.T, labels, gindex, BANK.family_of_group[groups])
        weights = dict(s.family_weights)
        l_group = torch.stack([v * weights.get(k, 1.0) for k, v in fam.items()]).sum() / sum(
            weights.get(k, 1.0) for k in fam)
        loss = l_clip + s.group_weight * l_group
        info = {}
        fade = max(1, s.steps // 4)
        if s.probe_steps > 0 and step < fade:
            l_probe = _probe_loss(self.probe, img_raw, self.pool.cells[torch.from_numpy(idx)])
            loss = loss + (1 - step / fade) * l_probe
            info["probe"] = l_probe.item()
        self._update(loss)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return {"loss": loss.item(), "clip": l_clip.item(), "group": l_group.item(),
                **{f"g_{k}": v.item() for k, v in fam.items()}, "scale": scale.item(), **info}


def save_teacher(model, out: Path, settings: TrainSettings, extra: dict | None = None) -> Path:
    """Write the open_clip ``local-dir:`` layout: config, fp16 safetensors, and how it was trained."""
    import open_clip
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    (out / WEIGHTS_FILE).chmod(0o644)
    (out / CONFIG_FILE).write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG,
                                               "description": DESCRIPTION}, indent=2) + "\n")
    meta = {"settings": asdict(settings), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), **(extra or {})}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out
