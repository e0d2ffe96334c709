"""Stage 2's loader at VQA v2 size: what reading the stores costs per sample as the data grows.

Builds VQA-v2-shaped stores directly, through the real writer and the real store-building path
(``get_or_build``: layout, shards, manifest, publish), with synthetic token values at the real row counts and
geometry: VQA v2 train has 443,757 questions over 82,783 COCO images (~5.4 questions per image); each question is
its own text row (6-14 words, so 8-16 CLIP tokens with start and end, zeros past them as a real text store has). The
teacher geometry is ``--teacher`` (default ``vit-b16``: 197 x 768 image tokens, pooled 512; CLIP text: 77 x 512). The
zero-shot store has one row per question and ``--zs-candidates`` logits (default 3,129: VQA v2's answer vocabulary;
0: no zero-shot store), in the format's layout (rows by image, ``logits`` in ~1 MB chunks, the candidates' labels and
question-independent texts stored once: see ``mad_pipeline/store/zeroshot.py``); its bytes on disk are reported.

Then, per size (1% and 10% of VQA v2 by default; ``--full`` adds 100%), over the real ``DistillDataset``, the real
chunk-aware sampler and ``ResumableBatches``, the real ``Collate`` (ViLT tokenizer, ViLT-B/32 preprocessing at 384
px of COCO-sized 640 x 480 JPEGs, MAD's ``TargetBuilder``) and a real ``DataLoader``:

- **counts**: chunks decoded, bytes they decode to, storage requests and bytes read, per sample and per side (image,
  text, zero-shot), counted in process by the loader's own counters (``ChunkCache`` / ``ReadCounter``) over one
  epoch (or ``--count-batches``) of the store reads alone (no JPEG decode). Deterministic: the same numbers on
  every run and machine.
- **loader**: samples/s of the DataLoader alone (``--num-workers`` workers, ``--batches`` batches after one warm-up
  batch), and of a training step with a null model (a linear layer that consumes the batch, then backward and SGD).
- **peak RSS**: of the measuring process and of its largest loader worker (each size is measured in a fresh child
  process, so building the stores does not count).
- page cache **warm** (a pass first) and **cold** where ``/proc/sys/vm/drop_caches`` can be written (reported if
  not).

Text layouts compared (``--text-layouts``, the first one is also timed): ``view`` (what training reads by
default: the text rows in training order, one chunk per image-store chunk, built from the ``rows`` store by
``mad_pipeline.training.text_view``; its build time and size are reported), ``rows`` (the text store's format: one
row per chunk inside ~32 MB shards, rows by hash), ``chunks`` (the layout before it: ~1 MB chunks of 14 rows) and
``grouped`` (1 MB chunks with rows in the order of their first image's row, simulated by writing the rows in that
order and remapping the dataset's text rows).

    python bench/scale.py --cache /data/mad-scale --json docs/results/bench-scale.json   # 1% and 10%
    python bench/scale.py --cache /data/mad-scale --full                                 # and 100%
    python bench/scale.py --cache /tmp/s --sizes 1 --count-batches 40 --batches 5        # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VQA_QUESTIONS, VQA_IMAGES = 443_757, 82_783
TEACHERS = {  # image (tokens, width, pooled, grid), text (max length, width)
    "vit-b16": {"image": (197, 768, 512, (14, 14)), "text": (77, 512), "input": 224},
    "vit-b32": {"image": (50, 768, 512, (7, 7)), "text": (77, 512), "input": 224},
    "vit-l14": {"image": (257, 1024, 768, (16, 16)), "text": (77, 768), "input": 224},
}
JPEG_POOL = 32  # distinct 640 x 480 JPEG files the samples' images cycle through
POOL_ROWS = 64  # distinct random rows the synthetic token values are drawn from (never repeated inside a chunk)


# -- the synthetic dataset --------------------------------------------------------------------------------------------

def vqa_like(fraction: float, seed: int = 0):
    """Samples shaped like VQA v2 train at ``fraction``: questions of an image next to each other (as in the VQA
    files), 10 answers each from a Zipf-like answer distribution."""
    from mad_pipeline.data.base import Sample

    n_q, n_img = max(1, round(VQA_QUESTIONS * fraction)), max(1, round(VQA_IMAGES * fraction))
    rng = np.random.default_rng(seed)
    words = rng.integers(6, 15, n_q)
    answers = np.minimum(rng.zipf(1.6, n_q), 3129) - 1
    image_of = (np.arange(n_q) * n_img) // n_q
    samples = []
    for q in range(n_q):
        text = " ".join(["what", "is", f"q{q}", *(f"w{(q * 7 + k) % 997}" for k in range(int(words[q]) - 3))]) + "?"
        a = f"ans{answers[q]}"
        samples.append(Sample(str(q), f"images/{image_of[q] % JPEG_POOL}.jpg", (text,),
                              {"question_id": q, "multiple_choice_answer": a, "answers": [a] * 10}))
    return samples, image_of, n_img


def image_hash(i: int) -> str:
    return hashlib.sha256(f"vqa-scale-image-{i}".encode()).hexdigest()


def write_jpegs(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(JPEG_POOL):
        p = root / "images" / f"{i}.jpg"
        if not p.exists():
            y, x = np.mgrid[0:480, 0:640]
            base = np.stack([x * 255 / 640, y * 255 / 480, (x + y) * 127 / 1120], -1)
            base = base + rng.normal(0, 20, (480, 640, 3))
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(p, quality=90)


# -- the stores ---------------------------------------------------------------------------------------------------

def _pool(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((POOL_ROWS, *shape), dtype=np.float32).astype(np.float16)


def build_stores(cache_dir: Path, fraction: float, teacher: str, layouts: list[str], zs_candidates: int,
                 log=print) -> dict:
    """Image, index, text (one store per text layout) and zero-shot stores for ``fraction`` of VQA v2."""
    from mad_pipeline.cache import Cache, make_key
    from mad_pipeline.extraction.build import get_or_build
    from mad_pipeline.hashing import sha256_text
    from mad_pipeline.store.layout import image_arrays, index_arrays, text_arrays

    cache = Cache.at(cache_dir)
    geo = TEACHERS[teacher]
    t_img, w_img, e_img, grid = geo["image"]
    t_txt, w_txt = geo["text"]
    samples, image_of, n_img = vqa_like(fraction)
    ih = [image_hash(i) for i in range(n_img)]
    img_order = np.argsort(ih)  # image rows sorted by hash
    img_row = np.empty(n_img, np.int64)
    img_row[img_order] = np.arange(n_img)
    base = {"bench": "vqa-scale", "fraction": fraction, "teacher": teacher}
    out: dict = {"samples": len(samples), "images": n_img}

    def shards(writer, fill):
        for s in sorted(set(range(writer.n_shards)) - writer.done_shards()):
            lo, hi = writer.shard_range(s)
            writer.write_shard(s, fill(lo, hi))

    img_pool = _pool((t_img, w_img), 1)

    def fill_images(lo, hi):
        r = np.arange(lo, hi)
        return {"image_hash": np.asarray([ih[i] for i in img_order[lo:hi]], object),
                "tokens": img_pool[r % POOL_ROWS], "pooled": img_pool[r % POOL_ROWS, 0, :e_img],
                "crop_box": np.tile(np.asarray([80, 0, 560, 480], np.float32), (hi - lo, 1)),
                "valid": np.ones(hi - lo, bool)}

    img_geo = {"grid": list(grid), "num_tokens": t_img, "width": w_img, "embed_dim": e_img, "input_size": geo["input"]}
    key = make_key("image", **base)
    out["image"] = get_or_build(cache, "image", key, n_img, lambda: image_arrays(t_img, w_img, e_img),
                                lambda w: shards(w, fill_images), lambda w: {"geometry": img_geo}, log=log).path

    texts = [s.texts[0] for s in samples]
    th = [sha256_text(t) for t in texts]
    hash_order = np.argsort(th)
    lengths = np.asarray([len(t.split()) + 2 for t in texts], np.int32)
    txt_pool = _pool((t_txt, w_txt), 2)
    txt_geo = {"max_length": t_txt, "width": w_txt, "embed_dim": e_img}
    out["text"] = {}
    for layout in [x for x in layouts if x != "view"] + (["rows"] if "view" in layouts and "rows" not in layouts
                                                          else []):
        # rows: by hash (the format); grouped: by the image row of the question's image (the simulated ordering)
        order = hash_order if layout != "grouped" else np.lexsort((np.arange(len(texts)), img_row[image_of]))

        def fill_texts(lo, hi, order=order):
            q = order[lo:hi]
            tok = txt_pool[np.arange(lo, hi) % POOL_ROWS].copy()
            span = np.full((hi - lo, t_txt, 2), -1, np.int32)
            for j, n in enumerate(lengths[q].tolist()):
                tok[j, n:] = 0
                span[j, 1 : n - 1] = np.stack([np.arange(n - 2) * 4, np.arange(n - 2) * 4 + 3], -1)
            return {"text_hash": np.asarray([th[i] for i in q], object),
                    "text": np.asarray([texts[i] for i in q], object), "tokens": tok, "length": lengths[q],
                    "pooled": tok[:, 0, :e_img], "char_span": span}

        def specs(layout=layout):
            sp = text_arrays(t_txt, w_txt, e_img)
            return sp if layout == "rows" else [dataclasses.replace(s, row_chunks=False) for s in sp]

        key = make_key("text", **base, layout=layout)
        path = get_or_build(cache, "text", key, len(texts), specs, lambda w, f=fill_texts: shards(w, f),
                            lambda w: {"geometry": txt_geo}, log=log).path
        # grouped: sample i's row; the dataset looks rows up by hash, so the bench remaps them (see remap_texts)
        perm = np.empty(len(texts), np.int64)
        perm[order] = np.arange(len(texts))
        out["text"][layout] = {"path": path, "row_of_question": perm if layout == "grouped" else None}

    def fill_index(lo, hi):
        return {"sample_id": np.asarray([s.id for s in samples[lo:hi]], object),
                "image_hash": np.asarray([ih[i] for i in image_of[lo:hi]], object),
                "text_hash": np.asarray([[h] for h in th[lo:hi]], object),
                "meta_json": np.asarray(["{}"] * (hi - lo), object)}

    key = make_key("index", **base)
    out["index"] = get_or_build(cache, "index", key, len(samples), lambda: index_arrays(1),
                                lambda w: shards(w, fill_index), lambda w: {}, log=log).path
    out["zeroshot"] = None
    if zs_candidates:
        out["zeroshot"] = build_zeroshot(cache, base, samples, [ih[i] for i in image_of], zs_candidates, log)
    write_jpegs(cache_dir / "data")
    return out


def build_zeroshot(cache, base: dict, samples, hashes: list[str], k: int, log=print) -> str:
    """The zero-shot store as stage 1 writes it for a question-independent VQA template: one row per question in
    image order, ``k`` logits each, the labels and texts (every question's the same) stored once."""
    from mad_pipeline.cache import make_key
    from mad_pipeline.extraction.build import get_or_build
    from mad_pipeline.store.zeroshot import ROW_ORDER, SHARED, image_order, write_shared, zeroshot_arrays

    labels = [f"ans{j}" for j in range(k)]
    shared = {"label": labels, "text": [f"a photo of {a}" for a in labels]}
    order = image_order(hashes)
    zs_pool = np.random.default_rng(3).normal(20, 3, (POOL_ROWS, k)).astype(np.float32)

    def fill(writer):
        write_shared(writer, shared, k)
        for s in sorted(set(range(writer.n_shards)) - writer.done_shards()):
            lo, hi = writer.shard_range(s)
            q = order[lo:hi]
            writer.write_shard(s, {"sample_id": np.asarray([samples[i].id for i in q], object),
                                   "image_hash": np.asarray([hashes[i] for i in q], object),
                                   "logits": zs_pool[np.arange(lo, hi) % POOL_ROWS]})

    key = make_key("zeroshot", **base, k=k, layout="shared")
    return get_or_build(cache, "zeroshot", key, len(samples), lambda: zeroshot_arrays(k, tuple(shared)), fill,
                        lambda w: {"task": "vqa", "row_order": ROW_ORDER, "constants": sorted(SHARED.values())},
                        log=log).path


# -- measuring (in a child process per size and layout) -----------------------------------------------------------

def dataset(cache_dir: Path, fraction: float, stores: dict, layout: str, store_only: bool = False):
    from mad_pipeline.tasks import get_task
    from mad_pipeline.training.dataset import DistillDataset, StorePaths

    samples, _, _ = vqa_like(fraction)
    task = get_task("vqa")
    task.fit(samples)
    from mad_pipeline.students.vilt import ViltImagePreprocess

    text = stores["text"]["rows" if layout == "view" else layout]
    by_hash = next((v["path"] for v in stores["text"].values() if v["row_of_question"] is None), None)
    if by_hash is None:
        raise SystemExit("--text-layouts: the grouped layout is measured beside rows or chunks (its rows are looked "
                         "up by hash there)")
    paths = StorePaths(stores["image"], by_hash, stores["index"], stores["zeroshot"])
    cls = StoreOnly if store_only else DistillDataset
    data = cls(samples, cache_dir / "data", task, ViltImagePreprocess(384), paths)
    if text["row_of_question"] is not None:  # grouped: where each question's row sits in the grouped store
        data._text_rows = np.asarray(text["row_of_question"])[[int(s.id) for s in data.samples]]
    data.stores = dataclasses.replace(paths, text=text["path"])  # read from this layout's store
    if layout == "view":  # the text rows in training order (built by main() beforehand: found here)
        from mad_pipeline.training.text_view import attach

        attach(data, cache_dir, "auto", log=lambda m: None, progress=False)
    return data, task


def _store_only_class():
    from mad_pipeline.training.batch import Item
    from mad_pipeline.training.dataset import DistillDataset

    class _StoreOnly(DistillDataset):
        """The store reads of ``DistillDataset`` without the JPEG decode (for the counts)."""

        def _item(self, i, need_image=False):
            s = self.samples[i]
            return Item(index=i, pixels=None, box=np.zeros(4, np.float32), texts=[s.texts[0]], target=None,
                        choice=0), None

    return _StoreOnly


StoreOnly = None  # set on first use (imports mad_pipeline lazily)


def count(cache_dir: Path, fraction: float, stores: dict, layout: str, batch_size: int, max_batches: int) -> dict:
    """Per-sample read counts over one epoch's chunk-aware order (or its first ``max_batches`` batches)."""
    from mad_pipeline.training.sampler import ChunkShuffleSampler, ResumableBatches

    global StoreOnly
    StoreOnly = StoreOnly or _store_only_class()
    data, _ = dataset(cache_dir, fraction, stores, layout, store_only=True)
    batches = ResumableBatches(ChunkShuffleSampler(data.image_rows(), data.image_chunk_rows, 8, seed=0), batch_size)
    t0 = time.perf_counter()
    for b, idx in enumerate(batches):
        if max_batches and b >= max_batches:
            break
        data.__getitems__(idx)
    return {"seconds": round(time.perf_counter() - t0, 3), "per_sample": data.read_counts()}


def throughput(cache_dir: Path, fraction: float, stores: dict, layout: str, batch_size: int, n_batches: int,
               workers: int) -> dict:
    """Samples/s of the loader alone and of a null-model training step, over the real DataLoader."""
    import torch

    from mad_pipeline.losses import MADConfig, TargetBuilder
    from mad_pipeline.students import build_student
    from mad_pipeline.training.collate import Collate, StudentTokenizer, make_loader
    from mad_pipeline.training.sampler import ChunkShuffleSampler, ResumableBatches

    data, task = dataset(cache_dir, fraction, stores, layout)
    tok = StudentTokenizer(build_student("vilt-tiny", "vqa", task.num_classes))
    collate = Collate(task, tok, TargetBuilder(MADConfig.full(), cache_mb=256), (12, 12), data.grid)
    batches = ResumableBatches(ChunkShuffleSampler(data.image_rows(), data.image_chunk_rows, 8, seed=0), batch_size)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = {}
    for mode in ("loader", "step"):
        loader = make_loader(data, collate, batch_size, workers, 0, torch.device("cpu"), batch_sampler=batches)
        it = iter(loader)
        next(it)  # warm-up: workers started, first chunks decoded
        t0 = time.perf_counter()
        n = 0
        for _ in range(n_batches):
            batch = next(it, None)
            if batch is None:
                break
            n += len(batch)
            if mode == "step":
                x = batch.pixel_values.float().mean(dim=(2, 3))
                loss = model(x).mean() + sum(t.float().mean() for t in _tensors(batch.targets)) * 0
                opt.zero_grad()
                loss.backward()
                opt.step()
        dt = time.perf_counter() - t0
        out[f"{mode}_samples_per_s"] = round(n / dt, 1) if dt > 0 else None
        del it, loader
    return out


def _tensors(obj) -> list:
    import torch

    if obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    return []


def drop_caches() -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as e:
        return f"not permitted ({type(e).__name__}: {e.strerror or e})"


def measure(args) -> dict:
    """One size and text layout, in this (fresh) process."""
    stores = json.loads(Path(args.stores_json).read_text())
    res = {"counts": count(args.cache, args.fraction, stores, args.layout, args.batch_size, args.count_batches)}
    if args.batches:
        res["warm"] = throughput(args.cache, args.fraction, stores, args.layout, args.batch_size, args.batches,
                                 args.num_workers)
        state = drop_caches()
        res["cold_cache"] = state
        if state == "dropped":
            res["cold"] = throughput(args.cache, args.fraction, stores, args.layout, args.batch_size, args.batches,
                                     args.num_workers)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["peak_worker_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return res


def build_view(cache_dir: Path, fraction: float, stores: dict) -> dict:
    """The text view of the dataset over the ``rows`` text store (``training/text_view.py``), built (or found) here:
    its build time, size and chunking."""
    from mad_pipeline.training import text_view

    global StoreOnly
    StoreOnly = StoreOnly or _store_only_class()
    data, _ = dataset(cache_dir, fraction, stores, "rows", store_only=True)
    t0 = time.perf_counter()
    plan = text_view.plan_for(data)
    path, built = text_view.ensure_view(cache_dir, data.stores.text, plan, log=lambda m: None, progress=False)
    return {"build_seconds": round(time.perf_counter() - t0, 1), "built_now": built, "disk_mb": _disk_mb(path),
            **text_view.describe(path)}


def _disk_mb(path: str) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="where the stores (and 32 JPEGs) are built and kept")
    p.add_argument("--sizes", default="1,10", help="percent of VQA v2 train, comma-separated")
    p.add_argument("--full", action="store_true", help="also 100%% (about 30 GB of stores with vit-b16)")
    p.add_argument("--teacher", choices=sorted(TEACHERS), default="vit-b16")
    p.add_argument("--text-layouts", default="view,rows,chunks")
    p.add_argument("--zs-candidates", type=int, default=3129,
                   help="zero-shot logits per question (default: VQA v2's 3,129 answers; 0: no zero-shot store)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=50, help="timed batches per mode (0: counts only)")
    p.add_argument("--count-batches", type=int, default=0, help="batches counted (0: one epoch)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "bench-scale.json")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--stores-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    sizes = [float(s) for s in args.sizes.split(",") if s] + ([100.0] if args.full else [])
    layouts = [s for s in args.text_layouts.split(",") if s]
    report = {"teacher": args.teacher, "batch_size": args.batch_size, "num_workers": args.num_workers,
              "cpus": os.cpu_count(), "sizes": {}}
    for pct in sizes:
        t0 = time.perf_counter()
        stores = build_stores(args.cache, pct / 100, args.teacher, layouts, args.zs_candidates, log=lambda m: None)
        built = round(time.perf_counter() - t0, 1)
        sj = args.cache / f"stores-{pct:g}.json"
        sj.write_text(json.dumps({**stores, "text": {k: {"path": v["path"], "row_of_question": None if
                                  v["row_of_question"] is None else v["row_of_question"].tolist()}
                                  for k, v in stores["text"].items()}}))
        entry = {"samples": stores["samples"], "images": stores["images"], "build_seconds": built,
                 "disk_mb": {"image": _disk_mb(stores["image"]),
                             **{f"text[{k}]": _disk_mb(v["path"]) for k, v in stores["text"].items()},
                             **({"zeroshot": _disk_mb(stores["zeroshot"])} if stores["zeroshot"] else {})},
                 "layouts": {}}
        if "view" in layouts:
            entry["view"] = build_view(args.cache, pct / 100, stores)
            entry["disk_mb"]["text[view]"] = entry["view"]["disk_mb"]
        for layout in layouts:
            cmd = [sys.executable, __file__, "--measure", "--cache", str(args.cache), "--fraction", str(pct / 100),
                   "--layout", layout, "--stores-json", str(sj), "--batch-size", str(args.batch_size),
                   "--batches", str(args.batches if layout == layouts[0] else 0),
                   "--count-batches", str(args.count_batches), "--num-workers", str(args.num_workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return 1
            entry["layouts"][layout] = json.loads(proc.stdout.strip().splitlines()[-1])
        entry["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine meanwhile
        report["sizes"][f"{pct:g}%"] = entry
        print_table(f"{pct:g}%", entry)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


def print_table(size: str, entry: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    view = entry.get("view")
    built = (f"; text view: {view['n_rows']:,} rows in chunks of {view['chunk_rows']}, {view['disk_mb']} MB, "
             f"{'built' if view['built_now'] else 'found'} in {view['build_seconds']} s" if view else "")
    t = Table(title=f"{size} of VQA v2: {entry['samples']:,} questions, {entry['images']:,} images "
                    f"(stores built in {entry['build_seconds']} s{built})")
    for c in ("text layout", "side", "chunks/sample", "KB decoded/sample", "requests/sample", "KB read/sample",
              "loader samples/s", "step samples/s", "peak RSS MB (main / worker)"):
        t.add_column(c, justify="right" if c not in ("text layout", "side") else "left")
    for layout, res in entry["layouts"].items():
        warm = res.get("warm", {})
        for side, c in res["counts"]["per_sample"].items():
            t.add_row(layout, side, f"{c['chunks']:.3f}", f"{c['bytes_decoded'] / 1e3:.1f}",
                      f"{c['requests']:.3f}", f"{c['bytes_read'] / 1e3:.1f}",
                      str(warm.get("loader_samples_per_s", "")), str(warm.get("step_samples_per_s", "")),
                      f"{res['peak_rss_mb']} / {res['peak_worker_rss_mb']}")
    t.caption = "on disk, MB: " + ", ".join(f"{k} {v}" for k, v in entry["disk_mb"].items())
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
