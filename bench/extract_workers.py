"""``python bench/extract.py --workers 1,2``: stage 1 on a local dask cluster of 1, 2, ... worker processes, against
the single-process path, in one run over the same photos and teacher.

Each timed run builds the image store of the same photos into a fresh cache through the library's own
``image_store`` (store creation, one dask task per shard, publication), exactly as ``mad extract --workers N`` does;
the clusters are started and warmed (each worker has built its teacher) before the timed runs, which are interleaved
across worker counts (rotating their order) so load from other processes hits all of them alike. Workers run one
torch thread each (dask's default for worker processes); the single-process row uses --threads torch threads.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


def _dataset(root: Path, paths: list[str]):
    from mad_pipeline.data import load_dataset

    manifest = root / "bench.jsonl"
    rels = [str(Path(p).relative_to(root)) for p in paths]
    manifest.write_text("".join(json.dumps({"id": i, "image": r}) + "\n" for i, r in enumerate(rels)))
    return load_dataset("jsonl", root, manifest=manifest)


def _build(pool, teacher, ds, inputs, cache_root: Path, args) -> float:
    """Seconds to build the image store into a fresh cache (store creation, every shard, publication)."""
    from mad_pipeline.cache import Cache
    from mad_pipeline.extraction.stores import BuildContext, image_store

    ctx = BuildContext(Cache.at(cache_root), args.batch_size, 0 if pool is not None else args.num_workers[0],
                       "fail", args.shard_rows, None, lambda m: None, pool)
    t0 = time.perf_counter()
    res = image_store(ctx, teacher, ds, inputs)
    assert not res.cached and res.rows_computed == len(inputs.unique_images()[0])
    return time.perf_counter() - t0


def bench_workers(args, make_photos, log) -> dict:
    """Images/s of the image store with ``args.workers`` dask worker counts and in one process (0 in the table)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from mad_pipeline.extraction.cluster import Pool
    from mad_pipeline.extraction.inputs import hash_inputs
    from mad_pipeline.teachers import get_teacher_spec
    from mad_pipeline.teachers.identity import LazyTeacher

    logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's start-up chatter
    name = args.models.split(",")[0].strip()
    counts = [0, *args.workers]  # 0: the single-process path
    with tempfile.TemporaryDirectory(prefix="mad-bench-workers-") as d:
        tmp = Path(d)
        n = 48 if args.images == "auto" else int(args.images)
        paths = make_photos(tmp / "photos", n)
        torch.manual_seed(0)
        weights = tmp / f"{name}.safetensors"
        model = open_clip.create_model(get_teacher_spec(name).model)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        del model
        ds = _dataset(tmp, paths)
        inputs = hash_inputs(ds, None)
        teacher = LazyTeacher(name, str(weights), "cpu", "fp32", None, tmp / "identities")
        pools = {w: Pool(workers=w, device="cpu", log=log) for w in args.workers}
        runs: dict[int, list[dict]] = {w: [] for w in counts}
        try:
            for w in counts:  # start each cluster and warm it: every worker builds its teacher
                _build(pools.get(w), teacher, ds, inputs, tmp / f"warm-{w}", args)
            for r in range(args.repeats):
                order = counts[r % len(counts):] + counts[: r % len(counts)]
                for w in order:
                    s = _build(pools.get(w), teacher, ds, inputs, tmp / f"run-{r}-{w}", args)
                    runs[w].append({"seconds": s, "images_per_s": n / s, "load1": os.getloadavg()[0]})
                    log(f"workers {w or 'none (one process)'}: {n / s:.2f} img/s")
        finally:
            for p in pools.values():
                p.close()
    med = {w: statistics.median(x["images_per_s"] for x in runs[w]) for w in counts}
    base = med[args.workers[0]]
    return {"teacher": name, "images": n, "shard_rows": args.shard_rows, "batch_size": args.batch_size,
            "torch_threads_single_process": torch.get_num_threads(), "usable_cores": len(os.sched_getaffinity(0)),
            "rows": [{"workers": w, "images_per_s": med[w], "vs_first": med[w] / base,
                      "min": min(x["images_per_s"] for x in runs[w]), "max": max(x["images_per_s"] for x in runs[w]),
                      "load1": statistics.median(x["load1"] for x in runs[w]), "runs": runs[w]}
                     for w in counts]}


def print_workers(res: dict, repeats: int) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"mad extract --workers on this machine: image store of {res['images']} photos, {res['teacher']}, "
                    f"shards of {res['shard_rows']} rows, batch {res['batch_size']} (median of {repeats} runs)")
    for col in ("dask workers", "img/s", "range", "vs first count", "load avg"):
        t.add_column(col, justify="left" if col == "dask workers" else "right")
    for row in res["rows"]:
        label = (f"none (one process, {res['torch_threads_single_process']} torch threads)" if row["workers"] == 0
                 else str(row["workers"]))
        t.add_row(label, f"{row['images_per_s']:.2f}", f"{row['min']:.2f}-{row['max']:.2f}",
                  f"{row['vs_first']:.2f}", f"{row['load1']:.2f}")
    Console().print(t)
    Console().print(f"{res['usable_cores']} usable cores; each dask worker runs one torch thread")
