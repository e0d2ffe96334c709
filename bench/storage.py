"""What each stage-1 storage option costs and what it changes: bytes per image and read speed, and (``--accuracy``)
its effect on the shapes low-shot MAD accuracy.

Bytes and read speed (the default mode), for fp16, int8, bitround:4, bitround:7, keep-tokens 16 and 32 on

  shapes    the real ``shapes-clip`` teacher's image tokens (65 tokens x 128) of a generated shapes world's training
            images, extracted through ``mad extract``'s stage (the fp16 store computes; every other option copies its
            rows from it and encodes them, exactly as the teacher's own output would be);
  vit-b16   ViT-B/16 geometry (197 tokens x 768), synthetic tokens written through the real ``StoreWriter``: per token
            a LayerNorm output (mean 0, variance 1 over the channels) with per-channel gains (log-normal, sigma 0.5)
            and biases (normal, sigma 0.3), four outlier channels at 12x gain (the "massive activations" of CLIP
            ViTs), and an image-level component shared by the image's tokens (so tokens correlate within an image).

Bytes are the token arrays' files on disk (``tokens`` plus ``tokens_scale`` / ``token_index`` where the option adds
them), per image and per stored token, and as a ratio to fp16. Read speed is rows per second through the real
reader (``FeatureStore`` -> ``ChunkCache``, as stage 2 reads: one chunk decoded at a time, int8 dequantised), best
of ``--repeats`` passes after a warm-up pass (page cache warm), per wall-clock second and per CPU second of the
reading process (the one to look at on a shared machine). Also reported: bitround with the tokens stored as
float32 instead of float16 (bytes only), and the largest int8 error relative to a token's largest value.

    python bench/storage.py                          # both, JSON in docs/results/bench-storage.json (~1 min CPU)
    python bench/storage.py --images 64 --vit-images 64 --json /tmp/s.json          # a quick look
    python bench/storage.py --accuracy               # mad run configs/storage.yaml once per option (see below)

``--accuracy`` runs ``configs/storage.yaml`` (the shapes world and training settings of ``configs/lowshot.yaml``:
MAD only, 5% of the training split, seeds 0, 1, 2) once per option through ``mad run`` (``extract.storage=...``,
``extract.keep_tokens=...``), sharing one cache, and prints per option the paired differences to fp16 (same seed,
same subset) on the test and shift splits against the seed spread of fp16 (the sample standard deviation over the
seeds). JSON in docs/results/bench-storage-accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {  # label -> (--storage, --keep-tokens)
    "fp16": ("fp16", None), "int8": ("int8", None), "bitround:4": ("bitround:4", None),
    "bitround:7": ("bitround:7", None), "keep-tokens 16": ("fp16", 16), "keep-tokens 32": ("fp16", 32),
}
TOKEN_ARRAYS = ("tokens", "tokens_scale", "token_index")


def log(msg: str) -> None:
    print(f"[storage {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def token_bytes(path: str | Path) -> int:
    """Bytes of the token arrays' chunk files (metadata excluded)."""
    return sum(f.stat().st_size for a in TOKEN_ARRAYS if (Path(path) / a).is_dir()
               for f in (Path(path) / a).rglob("*") if f.is_file() and f.name != "zarr.json")


def read_rate(path: str | Path, repeats: int) -> tuple[float, float]:
    """Rows per second through the reader, one chunk at a time, best of ``repeats`` passes after a warm-up pass:
    per wall-clock second and per CPU second of this process (the second barely moves when other processes share the
    cores)."""
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.training.chunks import ChunkCache

    st = open_store(path)
    arrays = [st["tokens"]] + ([st["token_index"]] if st.storage.keep_tokens else [])
    n, cr = arrays[0].shape[0], int(arrays[0].chunks[0])
    wall = cpu = 0.0
    for i in range(repeats + 1):
        cache = ChunkCache(2)
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, n, cr):
            rows = np.arange(lo, min(n, lo + cr))
            for a in arrays:
                cache.rows(a, rows)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i:  # the first pass warms the page cache
            wall, cpu = max(wall, n / dt), max(cpu, n / max(dc, 1e-9))
    return wall, cpu


def row(label: str, path: str | Path, n: int, tokens_per_image: int, fp16_bytes: int | None, repeats: int) -> dict:
    b = token_bytes(path)
    wall, cpu = read_rate(path, repeats)
    return {"option": label, "images": n, "bytes": b, "bytes_per_image": b / n,
            "bytes_per_token": b / (n * tokens_per_image), "tokens_per_image": tokens_per_image,
            "ratio_to_fp16": (b / fp16_bytes) if fp16_bytes else 1.0, "rows_per_s": wall, "rows_per_cpu_s": cpu}


# ---------------------------------------------------------------------------------------------- shapes teacher
def shapes_rows(images: int, work: Path, repeats: int) -> tuple[list[dict], dict]:
    from mad_pipeline.stages import extract as stage

    from mad_pipeline.shapes.formats import write_dataset
    from mad_pipeline.store.reader import open_store

    t0 = time.perf_counter()
    write_dataset(work / "world", size=images, seed=0)
    log(f"shapes world of {images} training images in {time.perf_counter() - t0:.1f} s")
    out, fp16_bytes, geo, paths = [], None, {}, {}
    for label, (storage, keep) in OPTIONS.items():
        cfg = stage.ExtractConfig(teacher="shapes-clip", data_root=work / "world" / "vqa", dataset="vqa",
                                  split="train", cache=work / "cache", num_workers=0, progress=False,
                                  storage=storage, keep_tokens=keep)
        res = stage.run(cfg, log=lambda _: None)
        st = open_store(res.stores["image"].path)
        geo, paths[label] = st.manifest["geometry"], st.path
        r = row(label, st.path, st.n_rows, st.storage.stored_tokens(geo["num_tokens"]), fp16_bytes, repeats)
        fp16_bytes = fp16_bytes or r["bytes"]
        out.append(r)
        log(f"shapes {label}: {r['bytes_per_image']:.0f} B/image ({r['ratio_to_fp16']:.3f} of fp16), "
            f"{r['rows_per_s']:.0f} rows/s, {r['rows_per_cpu_s']:.0f} rows/CPU s")
    ref = np.asarray(open_store(paths["fp16"])["tokens"][:], np.float32)
    q = np.asarray(open_store(paths["int8"])["tokens"][:], np.float32)
    return out, {"geometry": geo, "int8_max_error_rel": _rel_error(ref, q)}


def _rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest |error| over a token's largest |value| (int8's bound is 1/254 plus float16 rounding)."""
    peak = np.abs(ref).max(-1, keepdims=True)
    return float((np.abs(got - ref) / np.where(peak > 0, peak, 1)).max())


# ---------------------------------------------------------------------------------------------- ViT-B/16 geometry
def synthetic_tokens(n: int, tokens: int = 197, width: int = 768, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gain = np.exp(rng.normal(0, 0.5, width))
    gain[rng.choice(width, 4, replace=False)] *= 12  # outlier channels
    bias = rng.normal(0, 0.3, width)
    x = rng.normal(0, 0.7, (n, 1, width)) + rng.normal(0, 0.7, (n, tokens, width))
    x = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    return (x * gain + bias).astype(np.float16)


def write_synthetic(path: Path, tokens: np.ndarray, storage) -> str:
    from mad_pipeline.store.layout import FORMAT_VERSION, image_arrays
    from mad_pipeline.store.writer import StoreWriter

    n, t, d = tokens.shape
    key = f"{abs(hash((str(path), storage))):064d}"[-64:]
    w = StoreWriter(path.with_suffix(".partial"), "image", n, image_arrays(t, d, 512, storage), key)
    for s in range(w.n_shards):
        lo, hi = w.shard_range(s)
        w.write_shard(s, {"image_hash": np.asarray([f"{i:064x}" for i in range(lo, hi)], dtype=object),
                          "tokens": tokens[lo:hi], "pooled": np.zeros((hi - lo, 512), np.float16),
                          "crop_box": np.tile(np.float32([0, 0, 224, 224]), (hi - lo, 1)),
                          "valid": np.ones(hi - lo, bool)})
    man = {"format_version": FORMAT_VERSION, "kind": "image", "cache_key": key, "n_rows": n,
           "geometry": {"grid": [14, 14], "image_size": 224, "num_tokens": t, "width": d, "embed_dim": 512},
           **({} if storage.default else {"storage": storage.record()})}
    return str(w.finalize(man, path))


def vit_rows(images: int, work: Path, repeats: int) -> tuple[list[dict], dict]:
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.store.storage import Storage

    tokens = synthetic_tokens(images)
    out, fp16_bytes, paths = [], None, {}
    for label, (storage, keep) in OPTIONS.items():
        st = Storage.parse(storage, keep)
        paths[label] = write_synthetic(work / f"vit-{label.replace(' ', '-').replace(':', '')}.zarr", tokens, st)
        r = row(label, paths[label], images, st.stored_tokens(tokens.shape[1]), fp16_bytes, repeats)
        fp16_bytes = fp16_bytes or r["bytes"]
        out.append(r)
        log(f"vit-b16 {label}: {r['bytes_per_image']:.0f} B/image ({r['ratio_to_fp16']:.3f} of fp16), "
            f"{r['rows_per_s']:.0f} rows/s, {r['rows_per_cpu_s']:.0f} rows/CPU s")
    extra = {"int8_max_error_rel": _rel_error(tokens.astype(np.float32),
                                              np.asarray(open_store(paths["int8"])["tokens"][:], np.float32)),
             "bitround_float32_ratio_to_fp16": {f"bitround:{k}": _bitround_f32(tokens, k, work) / fp16_bytes
                                                for k in (4, 7)}}
    return out, extra


def _bitround_f32(tokens: np.ndarray, keepbits: int, work: Path) -> int:
    """Bytes of the tokens stored as float32 through BitRound keeping the same mantissa bits (the same chunk rows and
    compressors)."""
    import warnings

    import zarr
    from zarr.codecs.numcodecs import BitRound

    from mad_pipeline.store.layout import ArraySpec, codecs_for, rows_per_chunk

    spec = ArraySpec("tokens", tokens.shape[1:], "float16", ("image", "token", "channel"), big=True)
    path = work / f"f32-bitround{keepbits}.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(str(path), shape=tokens.shape, chunks=(rows_per_chunk([spec]), *tokens.shape[1:]),
                              dtype="float32", filters=[BitRound(keepbits=keepbits)],
                              compressors=codecs_for(spec))
        a[:] = tokens.astype(np.float32)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


# ---------------------------------------------------------------------------------------------- accuracy
def accuracy(args) -> dict:
    cache = Path(args.cache or ROOT / ".bench-storage-cache")
    per: dict[str, list[dict]] = {}
    for label, (storage, keep) in OPTIONS.items():
        over = [f"extract.storage={storage}"] + ([f"extract.keep_tokens={keep}"] if keep else [])
        cmd = [sys.executable, "-m", "mad_pipeline.cli", "run", str(ROOT / "configs" / "storage.yaml"), *over,
               *args.overrides, "--cache", str(cache), "--json", "--quiet"]
        log(" ".join(cmd[2:]))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{label}: mad run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        md = Path(res["report"]["files"]["markdown"])
        per[label] = json.loads(md.with_suffix(".json").read_text())["records"]
        log(f"{label}: {time.perf_counter() - t0:.0f} s")
    return {"options": per, "paired": paired(per)}


def paired(per: dict[str, list[dict]]) -> list[dict]:
    """Per option and split: the differences to fp16 paired by seed, their mean, and fp16's seed spread."""
    def values(recs):
        return {(r["split"], r["seed"]): r["value"] for r in recs if r.get("method") == "full"
                and r.get("metric") in (None, "vqa_accuracy")}

    base = values(per["fp16"])
    out = []
    for split in sorted({s for s, _ in base}):
        seeds = sorted(seed for s, seed in base if s == split)
        spread = statistics.stdev([base[(split, x)] for x in seeds]) if len(seeds) > 1 else float("nan")
        for label, recs in per.items():
            if label == "fp16":
                continue
            got = values(recs)
            diffs = [got[(split, x)] - base[(split, x)] for x in seeds if (split, x) in got]
            mean = statistics.fmean(diffs) if diffs else float("nan")
            out.append({"option": label, "split": split, "diffs": diffs, "mean_diff": mean,
                        "fp16_seed_spread": spread, "within_spread": abs(mean) < spread})
    return out


# ---------------------------------------------------------------------------------------------- main
def table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in ("option", "bytes/image", "bytes/token", "x fp16", "rows/s", "rows/CPU s"):
        t.add_column(c, justify="right" if c != "option" else "left")
    for r in rows:
        t.add_row(r["option"], f"{r['bytes_per_image']:,.0f}", f"{r['bytes_per_token']:.1f}",
                  f"{r['ratio_to_fp16']:.3f}", f"{r['rows_per_s']:,.0f}", f"{r['rows_per_cpu_s']:,.0f}")
    Console().print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400, help="shapes world training images (default 400)")
    ap.add_argument("--vit-images", type=int, default=128, help="synthetic ViT-B/16 images (default 128)")
    ap.add_argument("--repeats", type=int, default=5, help="timed read passes (best kept)")
    ap.add_argument("--json", type=Path, default=None, help="default docs/results/bench-storage[-accuracy].json")
    ap.add_argument("--accuracy", action="store_true", help="the low-shot accuracy of each option (mad run)")
    ap.add_argument("--cache", type=Path, default=None, help="--accuracy: cache root (default .bench-storage-cache)")
    ap.add_argument("overrides", nargs="*", help="--accuracy: key=value overrides of configs/storage.yaml")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_start": os.getloadavg()}
    if args.accuracy:
        res = {**meta, **accuracy(args)}
        for p in res["paired"]:
            print(f"{p['option']:>15} {p['split']:>6}: mean {p['mean_diff']:+.2f} (paired by seed: "
                  f"{', '.join(f'{d:+.2f}' for d in p['diffs'])}); fp16 seed spread {p['fp16_seed_spread']:.2f}; "
                  f"{'within' if p['within_spread'] else 'NOT within'} the spread")
        out = args.json or ROOT / "docs" / "results" / "bench-storage-accuracy.json"
    else:
        import torch

        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory(prefix="mad-bench-storage-") as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            shapes, shapes_extra = shapes_rows(args.images, Path(tmp) / "shapes", args.repeats)
            vit, vit_extra = vit_rows(args.vit_images, Path(tmp), args.repeats)
            meta.update(seconds=round(time.perf_counter() - t0, 1), cpu_seconds=round(time.process_time() - c0, 1),
                        load_avg_end=os.getloadavg())
        table(shapes, f"shapes-clip tokens ({args.images} images, {shapes_extra['geometry']['num_tokens']} x "
                      f"{shapes_extra['geometry']['width']})")
        table(vit, f"ViT-B/16 geometry, synthetic tokens ({args.vit_images} images, 197 x 768)")
        print(f"int8 largest error / token max: shapes {shapes_extra['int8_max_error_rel']:.5f}, "
              f"vit-b16 {vit_extra['int8_max_error_rel']:.5f}; bitround stored as float32 instead of float16 "
              f"(vit-b16, x fp16): {vit_extra['bitround_float32_ratio_to_fp16']}")
        res = {**meta, "shapes": {"rows": shapes, **shapes_extra}, "vit_b16": {"rows": vit, **vit_extra}}
        out = args.json or ROOT / "docs" / "results" / "bench-storage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
