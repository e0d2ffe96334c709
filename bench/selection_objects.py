"""What each token selection policy keeps: the fraction of kept patches that lie on the object(s) the sample's text
mentions, on the shapes world, where every object's mask is known.

For each sample of a task's evaluation split (VQA: the question; SNLI-VE: the hypothesis; VCR: the question with its
right answer, the text the teacher's text store holds) the object(s) the text names are recovered from the scene
(regenerated from the world's seed, split and index) and the item generator's own templates (a question or
hypothesis names a colour, a shape and/or a grid cell: the mentioned objects are those that match every named
attribute; texts that name no visible object -- "is there nothing at the top?", "no" answers -- are left out and
counted). VCR names its objects by tag (``[0]``, as in the release): the mentioned objects are the tagged ones of the
question and the right answer, read from the split's annotation file. Each policy then selects the teacher's
patches at the student's positions exactly as training does (``TargetBuilder`` on the real image and text stores of
the shipped ``shapes-clip`` teacher, at the study's top-k), and a kept patch is *on the object* when at least a
quarter of its pixels are inside the union of the mentioned objects' masks. ``all`` keeps every patch, so its figure
is the base rate (the objects' share of the image); ``random`` should match it.

    python bench/selection_objects.py                       # VQA, SNLI-VE and VCR on a size-2000 world's val split
    python bench/selection_objects.py --world DIR --cache C # an existing world (mad make-shapes) and cache
    python bench/selection_objects.py --joint tokens        # question-aware by tokens @ visual_proj only

``question-aware`` ranks each patch in the teacher's joint space; ``--joint both`` (the default) measures it twice:
with ``tokens @ visual_proj`` (the stored last-layer tokens, projected) and with the image store's dense joint-space
features (``mad extract --dense``: MaskCLIP's value path), row ``question-aware (dense)``. The image store is then
extracted with ``--dense`` (its tokens are the default store's, bit for bit).

Writes ``docs/results/selection_objects.json`` (per task and policy: mean fraction on object, its standard error,
samples) and ``docs/results/selection_objects.png`` (one VQA image with each policy's kept patches outlined) and
prints the table. Stores come from the cache when the study already extracted them (same world, same keys).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICIES = ("question-aware", "question-aware (dense)", "teacher-saliency", "all", "random")
DENSE_ROW = "question-aware (dense)"  # question-aware, ranking by the store's dense features
JOINT = {"tokens": ("question-aware",), "dense": (DENSE_ROW,), "both": ("question-aware", DENSE_ROW)}
STUDENT = "vilt-tiny"
ON_OBJECT = 0.25  # a kept patch is on the object when this share of its pixels is inside the objects' mask
# task -> (dataset reader, the world's folder, the split name of the world's val split)
TASKS = {"vqa": ("vqa", "vqa", "val"), "snli-ve": ("snli-ve", "snli-ve", "dev"), "vcr": ("vcr", "vcr", "val")}


def log(msg: str) -> None:
    print(f"[selection-objects {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- the world
def build_world(out: Path, size: int, seed: int) -> Path:
    """The world's val split only (the images, task files and scenes the figure needs), as ``mad make-shapes``
    writes it: the same bytes, so the same store keys as the study's world of this size and seed."""
    from mad_pipeline.shapes.formats import split_sizes, write_split

    if not (out / "scenes" / "val.jsonl").is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_split(out, "val", split_sizes(size)["val"], seed)
        (out / "shapes.json").write_text(json.dumps({"world": "shapes", "seed": seed, "size": size, "only": "val"}))
    return out


def scene_of(world: Path, seed: int):
    """image file stem's image id -> the regenerated scene (world split and index from the scenes file)."""
    from mad_pipeline.shapes.world import make_scene

    out = {}
    for line in (world / "scenes" / "val.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[int(r["image_id"])] = (r["split"], int(r["index"]))
    return lambda iid: make_scene(seed, *out[iid])


def mentioned(task: str, text: str, scene) -> list | None:
    """The scene's objects the text names (None: the text is not one of the generator's)."""
    from mad_pipeline.shapes.items import HYPOTHESES, QUESTIONS

    if task == "vqa":
        parsed = QUESTIONS.parse(text)
        if parsed is None:
            return None
        slots, params = parsed[0].slots, parsed[1]
    else:
        index = mentioned.__dict__.setdefault("hyp", {h.text(p): (h.slots, p) for h in HYPOTHESES
                                                      for p in h.all_params()})
        if text.strip() not in index:
            return None
        slots, params = index[text.strip()]
    named = {s: v for s, v in zip(slots, params, strict=True) if s in ("colour", "shape", "cell")}
    if not named:  # "how many shapes", "at least two shapes": every object
        return list(scene.objects)
    return [o for o in scene.objects if all(getattr(o, s) == v for s, v in named.items())]


def vcr_tags(root: Path, split: str) -> dict[str, list[int]]:
    """annot_id -> the object tags of the question and its right answer (``[i]`` is ``objects[i]`` of the scene),
    from the split's annotation file."""
    out = {}
    for line in (root / f"{split}.jsonl").read_text().splitlines():
        r = json.loads(line)
        tokens = r["question"] + r["answer_choices"][r["answer_label"]]
        out[r["annot_id"]] = sorted({int(i) for tok in tokens if isinstance(tok, list) for i in tok})
    return out


def object_mask(objects, size: int = 64, ss: int = 4) -> np.ndarray:
    """(size, size) float coverage of the objects' polygons (drawn at ``ss`` x and box-averaged)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(img)
    for o in objects:
        draw.polygon([(x * ss, y * ss) for x, y in o.polygon()], fill=255)
    a = np.asarray(img, np.float32).reshape(size, ss, size, ss).mean((1, 3)) / 255.0
    return a


def patch_on_object(mask: np.ndarray, grid: int, box) -> np.ndarray:
    """(grid * grid,) bool: the student patch covers the objects with at least ``ON_OBJECT`` of its pixels."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = mask[y0:y1, x0:x1]
    p = crop.shape[0] // grid
    share = crop[: p * grid, : p * grid].reshape(grid, p, grid, p).mean((1, 3))
    return (share >= ON_OBJECT).reshape(-1)


# ---------------------------------------------------------------------------------------------------- selection
def load_task(task: str, world: Path, cache: Path, seed: int, dense: bool = False):
    """Samples with their scene and mentioned objects, and the teacher's features for them (real stores)."""
    import mad_pipeline as mad
    from mad_pipeline.data import load_dataset
    from mad_pipeline.hashing import sha256_file, sha256_text
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.tasks import get_task

    reader, folder, split = TASKS[task]
    root = world / folder
    ds = load_dataset(reader, root, split=split)
    res = mad.extract(teacher="shapes-clip", dataset=reader, data_root=str(root), split=split, cache=str(cache),
                      num_workers=0, progress=False, log=lambda m: None, dense=dense)
    image, text = open_store(res.stores["image"].path), open_store(res.stores["text"].path)
    scene = scene_of(world, seed)
    t = get_task(task)
    tags = vcr_tags(root, split) if task == "vcr" else None
    keep, texts, skipped = [], [], {"no visible object named": 0, "not a generator text": 0}
    for s in ds.samples:
        txt = t.teacher_texts(s)[0]
        sc = scene(int(Path(s.image).stem.split("_")[-1]))
        objs = [sc.objects[i] for i in tags[s.id]] if tags is not None else mentioned(task, txt, sc)
        if objs is None:
            skipped["not a generator text"] += 1
        elif not objs:
            skipped["no visible object named"] += 1
        else:
            keep.append((s, sc, objs))
            texts.append(txt)
    irow = image.rows_for([sha256_file(root / s.image) for s, _, _ in keep])
    trow = text.rows_for([sha256_text(x) for x in texts])
    feats = {"tokens": image["tokens"][:][irow], "crop_box": image["crop_box"][:][irow],
             "text_pooled": text["pooled"][:][trow], "image_rows": irow,
             "dense": image["dense"][:][irow] if dense else None}
    return keep, feats, skipped, {"image": res.stores["image"].path, "text": res.stores["text"].path}


def kept_patches(policy: str, k, feats: dict, stores: dict, seed: int = 0) -> torch.Tensor:
    """(N, positions) bool: the student positions each sample's policy keeps, as training selects them (row
    ``question-aware (dense)``: question-aware ranking by the store's dense features)."""
    from mad_pipeline.losses import MADConfig, TargetBuilder, TeacherBatch, patch_centers, select_tokens
    from mad_pipeline.students.base import center_crop_box
    from mad_pipeline.students.vilt import VILT_CONFIGS
    from mad_pipeline.training.dataset import StorePaths
    from mad_pipeline.training.joint import joint_projection

    cfg = VILT_CONFIGS[STUDENT]
    grid = cfg["image_size"] // cfg["patch_size"]
    dense = policy == DENSE_ROW
    policy = "question-aware" if dense else policy
    cfg_mad = MADConfig(select_v=policy, k_v=k)
    proj = joint_projection(cfg_mad, StorePaths(image=stores["image"], text=stores["text"]))
    builder = TargetBuilder(cfg_mad, cache_mb=64, joint_proj=proj, dense=dense)
    n, out = len(feats["tokens"]), []
    gen = torch.Generator().manual_seed(seed)
    for lo in range(0, n, 256):
        sl = slice(lo, min(n, lo + 256))
        teacher = TeacherBatch(image_tokens=torch.from_numpy(feats["tokens"][sl]), image_grid=(8, 8),
                               crop_box=torch.from_numpy(feats["crop_box"][sl]),
                               text_pooled=torch.from_numpy(feats["text_pooled"][sl]),
                               image_dense=torch.from_numpy(feats["dense"][sl]) if dense else None)
        box = torch.tensor([center_crop_box(cfg["image_size"], 64, 64)] * (sl.stop - sl.start))
        tt = builder.build(teacher, patch_centers(box, (grid, grid)), None,
                           image_keys=feats["image_rows"][sl].tolist()).image
        keep = torch.zeros(sl.stop - sl.start, grid * grid, dtype=torch.bool)
        mask = tt.mask
        if not tt.selected:  # a step-side policy (random): drawn as the step draws it
            mask = select_tokens(policy, k, tt.tokens, None, tt.mask, generator=gen, index=tt.index,
                                 positions=grid * grid)
        rows = torch.arange(keep.shape[0])[:, None].expand_as(tt.index)
        keep[rows[mask], tt.index[mask]] = True  # padding (mask False) keeps nothing
        out.append(keep)
    return torch.cat(out)


def measure(task: str, keep_items, feats, stores, k, policies=POLICIES) -> tuple[dict, dict]:
    from mad_pipeline.students.base import center_crop_box

    grid = 8
    box = center_crop_box(64, 64, 64)
    on = np.stack([patch_on_object(object_mask(objs), grid, box) for _, _, objs in keep_items])
    out, kept_all = {}, {}
    for policy in policies:
        kept = kept_patches(policy, k, feats, stores).numpy()
        frac = (kept & on).sum(1) / np.maximum(kept.sum(1), 1)
        out[policy] = {"on_object": round(float(frac.mean()), 4),
                       "se": round(float(frac.std(ddof=1) / np.sqrt(len(frac))), 4),
                       "kept_per_sample": round(float(kept.sum(1).mean()), 2),
                       "object_first": round(float(_first_on(policy, kept, on, feats, stores, k)), 4)
                       if policy.startswith("question-aware") else None}
        kept_all[policy] = kept
    out["samples"] = len(keep_items)
    out["object_share"] = round(float(on.mean()), 4)
    return out, {"on": on, "kept": kept_all}


def _first_on(policy, kept, on, feats, stores, k) -> float:
    """Share of samples whose top-ranked patch (top-1 selection) is on a mentioned object."""
    top1 = kept_patches(policy, 1, feats, stores).numpy()
    return float((top1 & on).any(1).mean())


# ---------------------------------------------------------------------------------------------------- the picture
def picture(path: Path, world: Path, item, kept: dict, row: int, k) -> None:
    policies = list(kept)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    s, _, objs = item
    img = np.asarray(Image.open(world / "vqa" / s.image).convert("RGB"))
    fig, axes = plt.subplots(1, len(policies), figsize=(3.2 * len(policies), 3.6))
    for ax, policy in zip(axes, policies, strict=True):
        ax.imshow(img, extent=(0, 64, 64, 0), interpolation="nearest")
        for p in range(64):
            r, c = divmod(p, 8)
            if kept[policy][row][p]:
                ax.add_patch(Rectangle((c * 8 + 0.4, r * 8 + 0.4), 7.2, 7.2, fill=False, ec="black", lw=1.4))
            else:  # dropped: greyed out
                ax.add_patch(Rectangle((c * 8, r * 8), 8, 8, fill=True, fc="white", alpha=0.65, lw=0))
        for o in objs:
            x0, y0, x1, y1 = o.box()
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="magenta", lw=1.2, ls="--"))
        ax.set_title(policy, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f'"{s.texts[0]}"  (kept patches outlined, dropped ones greyed; top-k {k}; the mentioned object '
                 "dashed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from mad_pipeline.cache import Cache
    from mad_pipeline.losses import MADConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=None, help="a shapes world (mad make-shapes); default: build the "
                                                              "val split of --size/--seed under the cache")
    ap.add_argument("--size", type=int, default=2000, help="world size (the study's: 2000)")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default: MAD_CACHE, else the user cache)")
    ap.add_argument("--top-k", type=float, default=MADConfig().k_v, help="the study's top-k (a fraction)")
    ap.add_argument("--tasks", default="vqa,snli-ve,vcr")
    ap.add_argument("--joint", choices=sorted(JOINT), default="both",
                    help="question-aware's joint-space features: tokens (tokens @ visual_proj), dense (the store's "
                         "dense features, mad extract --dense) or both (two rows)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "selection_objects.json")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "results" / "selection_objects.png")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cache = Path(args.cache or Cache.at(None).root)
    world = args.world
    seed = args.seed
    if world is None:
        world = build_world(cache / "bench-selection-objects" / f"world-{args.size}-{args.seed}", args.size, seed)
    else:
        seed = json.loads((world / "shapes.json").read_text()).get("seed", seed)
    k = args.top_k
    policies = [p for p in POLICIES if not p.startswith("question-aware") or p in JOINT[args.joint]]
    dense = DENSE_ROW in policies
    results = {"top_k": k, "student": STUDENT, "teacher": "shapes-clip", "on_object_threshold": ON_OBJECT,
               "world": {"size": args.size, "seed": seed, "split": "val"}, "joint": args.joint, "tasks": {}}
    for task in args.tasks.split(","):
        log(f"{task}: reading the val split and its stores")
        items, feats, skipped, stores = load_task(task, world, cache, seed, dense)
        fig, detail = measure(task, items, feats, stores, k, policies)
        fig["skipped"] = skipped
        results["tasks"][task] = fig
        if task == "vqa":  # the picture: a two-object image whose question names one object
            row = next(i for i, (s, sc, objs) in enumerate(items) if len(sc.objects) >= 2 and len(objs) == 1
                       and QUESTION_FOR_PICTURE in s.texts[0])
            picture(args.png, world, items[row], detail["kept"], row, k)
        log(f"{task}: {fig}")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


QUESTION_FOR_PICTURE = "What color is the"


def table(results: dict) -> str:
    first = next(iter(results["tasks"].values()))
    policies = [p for p in POLICIES if p in first]
    qa = [p for p in policies if p.startswith("question-aware")]
    lines = ["| task | samples | objects' share | " + " | ".join(policies) + " | "
             + " | ".join(f"{p}: top-1 on object" for p in qa) + " |",
             "|---|---|---|" + "---|" * (len(policies) + len(qa))]
    for task, fig in results["tasks"].items():
        cells = [f"{100 * fig[p]['on_object']:.1f} +/- {100 * fig[p]['se']:.1f}" for p in policies]
        lines.append(f"| {task} | {fig['samples']} | {100 * fig['object_share']:.1f} | " + " | ".join(cells)
                     + " | " + " | ".join(f"{100 * fig[p]['object_first']:.1f}" for p in qa) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
