"""Reliability run: kill, corrupt, starve and attack the real ``mad`` CLI and count what goes wrong.

Everything runs the installed ``mad`` command in subprocesses, offline, on a small shapes world (``mad datasets make
shapes``) with the shipped ``shapes-clip`` teacher and the ``vilt-tiny`` student, in a temp dir removed at the end.
Parts (``--only`` picks some):

  kill        N random SIGKILLs each of ``mad extract``, ``mad distill`` and ``mad run`` (a kill at a uniformly random
              moment of an uninterrupted run's duration, then the same command again); every resumed result must
              equal the uninterrupted one: stores array by array and their manifests (timing fields aside), the
              trained student's tensors, the eval metric and the predictions.
  bad         the bad-input corpus: malformed manifests, images, paths, options, YAML configs; each case must end as
              one ``error:`` line with exit 2, or exit 0 with the bad records recorded as skips; 0 tracebacks; 0
              published partial stores (every store the case left in the cache verifies).
  concurrent  K ``mad extract`` processes of one key started together on one cache: all succeed, one valid store,
              equal to the reference.
  gc          ``mad store gc --older-than 0`` in a loop while ``mad distill`` reads the stores: the run ends with the
              reference result or one clear error, never with a different result.
  corrupt     a deleted and a byte-flipped shard file in the local cache and in a shared (directory) cache: ``mad
              store verify`` finds each; ``mad extract`` does not serve the local one as cached (it is quarantined
              and rebuilt, equal to the reference); a pull of the shared one is refused and publishes nothing.
  disk        a full disk: the cache on a small tmpfs (root only; otherwise the MAD_TEST_DISK_FULL_AFTER hook):
              ``mad extract`` stops with one line, publishes nothing, and once space is freed the rerun gives the
              reference stores.
  hostile     a hostile shared-cache server (HTTP): metadata with keys outside the store, absurd shapes, a body
              larger than the metadata allows, a server that trickles one byte at a time, one that never answers;
              each lookup ends within its deadline, with bounded memory, nothing written outside the cache and
              nothing published, and the run computes the stores itself.

    python bench/reliability.py                       # every part, 3 kills each (about 10 minutes on 2 cores)
    python bench/reliability.py --kills 10 --json docs/results/reliability.json
    python bench/reliability.py --only bad,hostile

It prints one table (part, cases, passed, failed, tracebacks) and the failures, and exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAD = [sys.executable, "-m", "mad_pipeline.cli"]
BASE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "COLUMNS": "200", "NO_COLOR": "1"}
BASE_ENV.pop("MAD_SHARED_CACHE", None)
BASE_ENV.pop("MAD_PULL", None)
TIMING_FIELDS = {"created", "seconds", "started", "finished", "elapsed", "duration_s", "wall_s", "hostname",
                 "library_versions", "machine", "host", "pid", "last_used"}
PARTS = ("kill", "bad", "concurrent", "gc", "corrupt", "disk", "hostile")


# -- running mad --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    max_rss_mb: float = 0.0

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in (self.out + "\n" + self.err).splitlines() if ln.startswith("error:")]

    def clean_error(self) -> bool:
        """Exit 2 with exactly one ``error:`` line and no traceback."""
        return self.rc == 2 and len(self.error_lines) == 1 and not self.traceback

    def brief(self) -> str:
        tail = (self.err.strip() or self.out.strip()).splitlines()[-3:]
        return f"rc {self.rc}: " + " | ".join(t.strip()[:160] for t in tail)


_RSS_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                "sys.exit(rc)")


def mad(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900) -> Result:
    """``mad ARGS`` in a child (through a small wrapper that reports the child's peak RSS)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *MAD, *args], env={**BASE_ENV, **(env or {})},
                           cwd=cwd, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = -999, "", f"timed out after {timeout:.0f} s"
    rss = 0.0
    lines = err.splitlines()
    if lines and lines[-1].startswith("MAXRSS_KB "):
        rss, err = int(lines[-1].split()[1]) / 1024, "\n".join(lines[:-1]) + "\n"
    return Result(list(args), rc, out, err, time.perf_counter() - t0, rss)


def last_json(r: Result) -> dict:
    for line in reversed(r.out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    raise RuntimeError(f"mad {' '.join(r.args)}: no JSON line ({r.brief()})")


def kill_at(args: list[str], env: dict, at: float) -> float:
    """Start ``mad ARGS``, SIGKILL it after ``at`` seconds (if still running); return when it was killed (or ended)."""
    proc = subprocess.Popen([*MAD, *args], env={**BASE_ENV, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.perf_counter()
    try:
        proc.wait(timeout=at)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: decode workers die with it, as on a node loss
        proc.wait()
    return time.perf_counter() - t0


# -- comparing results --------------------------------------------------------------------------------------------
def _strip(meta):
    if isinstance(meta, dict):
        return {k: _strip(v) for k, v in meta.items() if k not in TIMING_FIELDS}
    if isinstance(meta, list):
        return [_strip(v) for v in meta]
    return meta


def stores_of(cache: Path) -> dict[tuple[str, str], Path]:
    return {(p.parent.name, p.stem): p for p in sorted(cache.glob("stores/*/*.zarr")) if p.parent.name != "quarantine"}


def store_diff(a: Path, b: Path) -> list[str]:
    """Differences between two stores: arrays (values, dtype, shape) and metadata (timing fields aside)."""
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    diffs = []
    if _strip(dict(ga.attrs)) != _strip(dict(gb.attrs)):
        diffs.append("attributes differ")
    na, nb = sorted(k for k, _ in ga.arrays()), sorted(k for k, _ in gb.arrays())
    if na != nb:
        return [*diffs, f"arrays {na} vs {nb}"]
    for name in na:
        try:
            x, y = np.asarray(ga[name][...]), np.asarray(gb[name][...])
        except Exception as e:  # noqa: BLE001 -- a corrupt chunk: a difference, not a crash of the bench
            diffs.append(f"{name}: unreadable ({type(e).__name__}: {str(e)[:80]})")
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            diffs.append(f"{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
        elif not (np.array_equal(x, y, equal_nan=True) if x.dtype.kind in "fc"
                  else np.array_equal(x.astype(object), y.astype(object))):
            diffs.append(f"{name}: values differ")
    return diffs


def caches_diff(a: Path, b: Path) -> list[str]:
    """The stores of reference cache ``a`` against the same keys in ``b`` (which may hold more)."""
    sa, sb = stores_of(a), stores_of(b)
    if not set(sa) <= set(sb):
        return [f"stores missing: {sorted(k[0] + '/' + k[1][:12] for k in set(sa) - set(sb))}"]
    return [f"{k[0]}/{k[1][:12]}: {d}" for k in sa for d in store_diff(sa[k], sb[k])]


def tensors_of(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted((run_dir / "student").rglob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def run_diff(a: Path, b: Path) -> list[str]:
    """A distill run against another: the student's tensors, the final metric, the predictions."""
    diffs = []
    ta, tb = tensors_of(a), tensors_of(b)
    if not ta:
        diffs.append(f"{a}: no student tensors")
    if set(ta) != set(tb):
        diffs.append("student tensors: names differ")
    diffs += [f"student {k}: values differ" for k in ta if k in tb and not np.array_equal(ta[k], tb[k])]
    for rel in ("metrics.json",):
        ma, mb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
        if _strip(ma.get("eval", ma.get("final"))) != _strip(mb.get("eval", mb.get("final"))):
            diffs.append(f"{rel}: eval differs")
    pa, pb = sorted((a / "predictions").glob("*.json")), sorted((b / "predictions").glob("*.json"))
    if [p.name for p in pa] != [p.name for p in pb]:
        diffs.append("prediction files differ")
    diffs += [f"predictions/{x.name} differ" for x, y in zip(pa, pb, strict=True) if x.read_bytes() != y.read_bytes()]
    return diffs


def verify_all(cache: Path) -> list[str]:
    """Every published store in ``cache`` verifies (``mad store verify``); the problems otherwise."""
    bad = []
    for (kind, key), path in stores_of(cache).items():
        r = mad("store", "verify", str(path), "--json")
        if r.rc != 0:
            bad.append(f"{kind}/{key[:12]}: {r.brief()}")
    return bad


# -- bookkeeping --------------------------------------------------------------------------------------------------
@dataclass
class Part:
    name: str
    cases: int = 0
    passed: int = 0
    tracebacks: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, ok: bool, what: str, result: Result | None = None) -> bool:
        self.cases += 1
        if result is not None and result.traceback:
            self.tracebacks += 1
        if ok:
            self.passed += 1
        else:
            self.failures.append(what + (f" -- {result.brief()}" if result is not None else ""))
        print(f"  [{'ok' if ok else 'FAIL'}] {self.name}: {what}", flush=True)
        return ok


@dataclass
class World:
    tmp: Path
    shapes: Path          # the shapes world (mad datasets make shapes)
    ref_cache: Path       # stores of an uninterrupted extraction (the train split's image, text, index, zero-shot)
    dist_cache: Path      # a copy of ref_cache plus what the reference distill run extracted (the eval split)
    extract_args: list[str]
    distill_args: list[str]
    ref_run: Path         # an uninterrupted distill run
    extract_seconds: float
    distill_seconds: float

    def data_root(self) -> str:
        return str(self.shapes / "vqa")


def setup(tmp: Path, size: int, steps: int) -> World:
    shapes = tmp / "shapes"
    r = mad("datasets", "make", "shapes", "--out", str(shapes), "--size", str(size), "--seed", "0", "-q")
    if r.rc != 0:
        raise SystemExit(f"setup: mad datasets make failed: {r.brief()}")
    extract_args = ["extract", "--teacher", "shapes-clip", "--dataset", "vqa", "--split", "train", "--task", "vqa",
                    "--data-root", str(shapes / "vqa"), "--num-workers", "0", "--shard-rows", "16", "--json", "-q"]
    ref_cache = tmp / "ref-cache"
    r = mad(*extract_args, env={"MAD_CACHE": str(ref_cache)})
    if r.rc != 0:
        raise SystemExit(f"setup: reference extraction failed: {r.brief()}")
    ext_s = r.seconds
    distill_args = ["distill", "--task", "vqa", "--dataset", "vqa", "--data-root", str(shapes / "vqa"),
                    "--teacher", "shapes-clip", "--student", "vilt-tiny", "--steps", str(steps), "--batch-size", "16",
                    "--checkpoint-every", "5", "--eval-every", "0", "--num-workers", "0", "--vocab-min-count", "1",
                    "--json", "-q"]
    ref_run, dist_cache = tmp / "ref-run", tmp / "dist-cache"
    shutil.copytree(ref_cache, dist_cache)
    r = mad(*distill_args, "--out", str(ref_run), env={"MAD_CACHE": str(dist_cache)})
    if r.rc != 0:
        raise SystemExit(f"setup: reference distill failed: {r.brief()}")
    print(f"setup: shapes world of {size} images; reference extraction {ext_s:.1f} s, distill ({steps} steps) "
          f"{r.seconds:.1f} s", flush=True)
    return World(tmp, shapes, ref_cache, dist_cache, extract_args, distill_args, ref_run, ext_s, r.seconds)


# -- parts --------------------------------------------------------------------------------------------------------
def part_kill(w: World, kills: int, rng: random.Random) -> Part:
    p = Part("kill")
    for i in range(kills):  # mad extract
        cache = w.tmp / f"kill-extract-{i}"
        at = rng.uniform(0.05, 0.95) * w.extract_seconds
        kill_at(w.extract_args, {"MAD_CACHE": str(cache)}, at)
        r = mad(*w.extract_args, env={"MAD_CACHE": str(cache)})
        diffs = caches_diff(w.ref_cache, cache) if r.rc == 0 else ["resume failed"]
        p.check(r.rc == 0 and not diffs, f"extract killed at {at:.1f} s, resumed: "
                + ("identical stores" if not diffs else "; ".join(diffs[:3])), r)
        shutil.rmtree(cache, ignore_errors=True)
    for i in range(kills):  # mad distill (stores cached: the kill lands in training, evaluation or saving)
        out = w.tmp / f"kill-distill-{i}"
        at = rng.uniform(0.05, 0.95) * w.distill_seconds
        kill_at([*w.distill_args, "--out", str(out)], {"MAD_CACHE": str(w.dist_cache)}, at)
        r = mad(*w.distill_args, "--out", str(out), env={"MAD_CACHE": str(w.dist_cache)})
        diffs = run_diff(w.ref_run, out) if r.rc == 0 else ["resume failed"]
        p.check(r.rc == 0 and not diffs, f"distill killed at {at:.1f} s, resumed: "
                + ("identical student, metric and predictions" if not diffs else "; ".join(diffs[:3])), r)
        shutil.rmtree(out, ignore_errors=True)
    cfg = w.tmp / "run.yaml"
    cfg.write_text(json.dumps({
        "name": "reliability", "task": "vqa", "data": {"root": w.data_root()}, "teacher": "shapes-clip",
        "student": "vilt-tiny", "methods": ["baseline", "full"], "fractions": [0.5], "seeds": [0],
        "vocab_min_count": 1, "train": {"steps": 10, "batch_size": 16}}))
    ref_cache, ref_out = w.tmp / "run-ref-cache", w.tmp / "run-ref-out"
    ref = mad("run", str(cfg), "--cache", str(ref_cache), "--out", str(ref_out), "-q")
    if not p.check(ref.rc == 0, "mad run reference", ref):
        return p
    for i in range(kills):
        cache, out = w.tmp / f"kill-run-cache-{i}", w.tmp / f"kill-run-out-{i}"
        args = ["run", str(cfg), "--cache", str(cache), "--out", str(out), "-q"]
        at = rng.uniform(0.05, 0.95) * ref.seconds
        kill_at(args, {}, at)
        r = mad(*args)
        diffs = _report_diff(ref_out, out) if r.rc == 0 else ["resume failed"]
        p.check(r.rc == 0 and not diffs, f"mad run killed at {at:.1f} s, resumed: "
                + ("identical report" if not diffs else "; ".join(diffs[:3])), r)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return p


def _report_diff(a: Path, b: Path) -> list[str]:
    fa = sorted(x.relative_to(a) for x in a.rglob("*.csv"))
    fb = sorted(x.relative_to(b) for x in b.rglob("*.csv"))
    if not fa or fa != fb:
        return [f"report files {fa} vs {fb}"]
    return [f"{x} differs" for x in fa if (a / x).read_text() != (b / x).read_text()]


def bad_cases(w: World) -> list[tuple[str, list[str], dict, str]]:
    """(name, mad args, files to write {relative path: bytes}, expectation: 'error' or 'skip')."""
    root = w.data_root()
    img = next((w.shapes / "vqa" / "train2014").glob("*")).name
    good = {"id": 0, "image": f"train2014/{img}", "text": "a photo"}
    jl = ["extract", "--teacher", "shapes-clip", "--manifest", "{tmp}/m.jsonl", "--data-root", "{tmp}/root",
          "--num-workers", "0", "-q"]

    def manifest(*records, raw: bytes | None = None) -> dict:
        body = raw if raw is not None else b"".join(json.dumps(r).encode() + b"\n" for r in records)
        return {"m.jsonl": body}

    cases = [
        ("teacher name typo", ["extract", "--teacher", "shapes-clp", "--dataset", "vqa", "--split", "train",
                               "--data-root", root, "-q"], {}, "error"),
        ("missing data root", ["extract", "--teacher", "shapes-clip", "--dataset", "vqa", "--split", "train",
                               "--data-root", "{tmp}/nope", "-q"], {}, "error"),
        ("missing manifest", [*jl[:4], "{tmp}/none.jsonl", *jl[5:]], {}, "error"),
        ("manifest not JSON", jl, manifest(raw=b"{not json\n"), "error"),
        ("manifest empty", jl, manifest(raw=b""), "error"),
        ("manifest bad UTF-8", jl, manifest(raw=b'{"id": 1, "image": "\xff\xfe", "text": "x"}\n'), "error"),
        ("manifest deeply nested JSON", jl, manifest(raw=b"[" * 100000 + b"]" * 100000 + b"\n"), "error"),
        ("record with neither image nor text", jl, manifest({"id": 1, "caption": "x"}), "error"),
        ("record with numeric text", jl, manifest({"id": 1, "image": good["image"], "text": 5}), "error"),
        ("duplicate ids", jl, manifest(good, good), "error"),
        ("path with ..", jl, manifest({**good, "image": "../outside.png"}), "error"),
        ("absolute path", jl, manifest({**good, "image": "/etc/passwd"}), "error"),
        ("missing image file", jl, manifest({**good, "image": "train2014/none.png"}), "error"),
        ("truncated image", jl, {**manifest({**good, "image": "bad.png"}), "root/bad.png": b"\x89PNG\r\n\x1a\n"},
         "error"),
        ("all images unreadable, --on-error skip", [*jl, "--on-error", "skip"],
         {**manifest({**good, "image": "bad.png"}, {"id": 2, "image": "bad2.png", "text": "y"}),
          "root/bad.png": b"not an image", "root/bad2.png": b""}, "skip"),
        ("one image unreadable, --on-error skip", [*jl, "--on-error", "skip"],
         {**manifest(good, {"id": 2, "image": "bad.png", "text": "y"}), "root/bad.png": b"junk"}, "skip"),
        ("--train-fraction 2", [*jl, "--train-fraction", "2"], manifest(good), "error"),
        ("--batch-size 0", [*jl, "--batch-size", "0"], manifest(good), "error"),
        ("--device cuda:99", [*jl, "--device", "cuda:99"], manifest(good), "error"),
        ("--task vqa2", ["distill", "--task", "vqa2", "--data-root", root, "--out", "{tmp}/out", "-q"], {}, "error"),
        ("distill --device cuda without GPU", [*w.distill_args, "--device", "cuda", "--out", "{tmp}/out"], {},
         "error"),
        ("distill --batch-size 10**12", [*w.distill_args, "--batch-size", str(10**12), "--out", "{tmp}/out"], {},
         "error"),
        ("distill --steps 10**30", [*w.distill_args, "--steps", str(10**30), "--out", "{tmp}/out"], {}, "error"),
        ("distill checkpoint of another architecture", [*w.distill_args, "--pretrained", "{tmp}/ck.safetensors",
                                                         "--out", "{tmp}/out"],
         {"ck.safetensors": _tiny_safetensors()}, "error"),
    ]
    yaml_base = f"task: vqa\ndata:\n  root: {root}\nteacher: shapes-clip\nstudent: vilt-tiny\n"
    run = ["run", "{tmp}/c.yaml", "--dry-run", "--cache", "{tmp}/cache", "--out", "{tmp}/out"]
    for name, text in [
        ("YAML not a mapping", "- 1\n- 2\n"),
        ("YAML syntax error", yaml_base + "train: {steps: [\n"),
        ("YAML duplicate key", yaml_base + "student: vilt-tiny\n"),
        ("YAML .nan", yaml_base + "train: {lr: .nan}\n"),
        ("YAML .inf", yaml_base + "train: {lr: .inf}\n"),
        ("YAML deeply nested", yaml_base + "extra: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("YAML unknown key", yaml_base + "trian: {steps: 3}\n"),
        ("YAML wrong type", yaml_base + "train: {steps: many}\n"),
        ("YAML batch_size 10**12", yaml_base + f"train: {{batch_size: {10**12}}}\n"),
        ("YAML steps 10**30", yaml_base + f"train: {{steps: {10**30}}}\n"),
        ("YAML num_workers 100000", yaml_base + "num_workers: 100000\n"),
        ("YAML device cuda:99", yaml_base + "device: 'cuda:99'\n"),
        ("YAML python tag", yaml_base + "x: !!python/object/apply:os.system ['true']\n"),
    ]:
        cases.append((name, run, {"c.yaml": text.encode()}, "error"))
    cases.append(("override train.lr=abc", [*run, "train.lr=abc"], {"c.yaml": yaml_base.encode()}, "error"))
    return cases


def _tiny_safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"weight": np.zeros((3, 3), np.float32)})


def part_bad(w: World) -> Part:
    p = Part("bad")
    img = next((w.shapes / "vqa" / "train2014").glob("*"))
    for i, (name, args, files, expect) in enumerate(bad_cases(w)):
        case = w.tmp / f"bad-{i}"
        (case / "root" / "train2014").mkdir(parents=True)
        shutil.copy(img, case / "root" / "train2014" / img.name)
        for rel, body in files.items():
            (case / rel).parent.mkdir(parents=True, exist_ok=True)
            (case / rel).write_bytes(body)
        cache = case / "cache"
        r = mad(*[a.replace("{tmp}", str(case)) for a in args], env={"MAD_CACHE": str(cache)}, timeout=300)
        unverified = verify_all(cache)
        partial = [str(x.relative_to(cache)) for x in cache.glob("partial/*/*") if x.exists()]
        if expect == "error":
            ok = r.clean_error()
        else:
            ok = r.rc == 0 and not r.traceback and bool(stores_of(cache))
            if ok:
                img_store = [v for k, v in stores_of(cache).items() if k[0] == "image"]
                errs = json.loads((img_store[0] / "zarr.json").read_text())["attributes"]["mad"].get("errors", [])
                ok = bool(errs) if img_store else False
        # an error keeps the shards already computed (partial/) for the corrected rerun; a skip run publishes
        ok = ok and not unverified and (expect == "error" or not partial)
        what = f"{name}: " + ("one error line" if expect == "error" else "skips recorded")
        if not ok:
            what += f" (published-unverified {unverified[:2]}, partial {partial[:2]})" if unverified or partial else ""
        p.check(ok, what, r)
        shutil.rmtree(case, ignore_errors=True)
    return p


def part_concurrent(w: World, k: int = 3) -> Part:
    p = Part("concurrent")
    cache = w.tmp / "concurrent"
    procs = [subprocess.Popen([*MAD, *w.extract_args], env={**BASE_ENV, "MAD_CACHE": str(cache)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [(pr.wait(timeout=1800), *pr.communicate()) for pr in procs]
    for i, (rc, out, err) in enumerate(outs):
        p.check(rc == 0, f"writer {i + 1}/{k} succeeded", Result([], rc, out, err, 0))
    keys = [tuple(sorted((s["kind"], s["key"]) for s in last_json(Result([], rc, out, err, 0))["stores"].values()))
            for rc, out, err in outs if rc == 0]
    p.check(len(set(keys)) == 1, "all writers report the same store keys")
    diffs = caches_diff(w.ref_cache, cache)
    p.check(not diffs, "one valid store per key, equal to the reference" + (f": {diffs[:2]}" if diffs else ""))
    p.check(not verify_all(cache), "every store verifies")
    shutil.rmtree(cache, ignore_errors=True)
    return p


def part_gc(w: World) -> Part:
    p = Part("gc")
    cache = w.tmp / "gc-cache"
    shutil.copytree(w.dist_cache, cache)
    out = w.tmp / "gc-run"
    proc = subprocess.Popen([*MAD, *w.distill_args, "--out", str(out)], env={**BASE_ENV, "MAD_CACHE": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gcs = 0
    while proc.poll() is None:
        r = mad("store", "gc", "--cache", str(cache), "--older-than", "0", "--json")
        gcs += 1
        if r.traceback:
            p.check(False, "mad store gc during a read", r)
    out_s, err_s = proc.communicate()
    r = Result(w.distill_args, proc.returncode, out_s, err_s, 0)
    if r.rc == 0:
        diffs = run_diff(w.ref_run, out)
        p.check(not diffs, f"distill with {gcs} gc runs meanwhile: "
                + ("reference result" if not diffs else "; ".join(diffs[:3])), r)
    else:
        p.check(r.clean_error(), f"distill with {gcs} gc runs meanwhile: one clear error", r)
    return p


def _shard_files(store: Path, array: str) -> list[Path]:
    return sorted(f for f in (store / array).rglob("*") if f.is_file() and f.name != "zarr.json")


def _corrupt(store: Path, how: str) -> str:
    files = _shard_files(store, "tokens")
    victim = files[len(files) // 2]
    if how == "delete":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    return str(victim.relative_to(store))


def part_corrupt(w: World) -> Part:
    p = Part("corrupt")
    for how in ("delete", "flip"):
        cache = w.tmp / f"corrupt-{how}"
        shutil.copytree(w.dist_cache, cache)  # the train split's stores (corrupted here) and the eval split's
        store = next(v for k, v in stores_of(cache).items() if k[0] == "image" and (w.ref_cache / "stores" / k[0]
                                                                                      / v.name).exists())
        rel = _corrupt(store, how)
        r = mad("store", "verify", str(store))
        p.check(r.rc != 0 and not r.traceback, f"local {how} {rel}: mad store verify finds it", r)
        r = mad(*w.extract_args, env={"MAD_CACHE": str(cache)})
        cached = r.rc == 0 and last_json(r)["stores"]["image"].get("cached")
        if how == "delete" or not cached:  # a missing shard is seen at lookup: the store is rebuilt
            diffs = caches_diff(w.ref_cache, cache) if r.rc == 0 else ["rerun failed"]
            p.check(r.rc == 0 and not cached and not diffs,
                    f"local {how}: mad extract rebuilds it (not served as cached), equal to the reference"
                    + (f" ({diffs[:2]})" if diffs else ""), r)
        else:  # a flipped byte in a present shard: the lookup does not read every chunk, so the reader must catch it
            out = w.tmp / f"corrupt-run-{how}"
            r = mad(*w.distill_args, "--out", str(out), env={"MAD_CACHE": str(cache)})
            p.check(r.clean_error() and "checksum" in " ".join(r.error_lines).lower(),
                    f"local {how}: served as cached by the lookup; mad distill stops at the first read of the "
                    "corrupt chunk with one line naming it (nothing trained on it)", r)
        shutil.rmtree(cache, ignore_errors=True)
        # shared (a directory cache): push the reference, corrupt the shared copy, pull into an empty cache
        shared, local = w.tmp / f"shared-{how}", w.tmp / f"pull-{how}"
        src = next(v for k, v in stores_of(w.ref_cache).items() if k[0] == "image")
        r = mad("store", "push", str(src), str(shared))
        if not p.check(r.rc == 0, f"push to a shared directory ({how})", r):
            continue
        sh_store = next(iter(shared.glob(f"stores/image/{src.name}")), None)
        if sh_store is None:
            p.check(False, f"pushed store not found under {shared}")
            continue
        _corrupt(sh_store, how)
        r = mad("store", "pull", src.stem, "--from", str(shared), "--cache", str(local))
        p.check(r.rc != 0 and not r.traceback and not stores_of(local),
                f"shared {how}: the pull is refused and publishes nothing", r)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
    return p


def part_disk(w: World) -> Part:
    p = Part("disk")
    need = sum(f.stat().st_size for f in w.ref_cache.rglob("*") if f.is_file())
    mnt = w.tmp / "small-fs"
    mnt.mkdir()
    size = need * 2 + 4 * 2**20
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    try:
        cache = mnt / "cache"
        env = {"MAD_CACHE": str(cache)}
        if mounted:
            filler = mnt / "filler"
            free = shutil.disk_usage(mnt).free
            with open(filler, "wb") as f:  # leave a third of what the stores need
                f.write(b"\0" * max(0, free - need // 3))
            how = f"tmpfs of {size / 2**20:.1f} MB, {need // 3 / 2**20:.2f} MB free of the {need / 2**20:.2f} MB needed"
        else:
            env["MAD_TEST_DISK_FULL_AFTER"] = str(need // 3)
            how = "no tmpfs (not root): the disk-full test hook"
        r = mad(*w.extract_args, env=env)
        p.check(r.clean_error() and "space" in " ".join(r.error_lines).lower(),
                f"{how}: one error line naming the lack of space", r)
        p.check(not stores_of(cache), "nothing published")
        if mounted:
            filler.unlink()
        env.pop("MAD_TEST_DISK_FULL_AFTER", None)
        r = mad(*w.extract_args, env=env)
        diffs = caches_diff(w.ref_cache, cache) if r.rc == 0 else ["rerun failed"]
        p.check(r.rc == 0 and not diffs, "space freed: the rerun gives the reference stores"
                + (f" ({diffs[:2]})" if diffs else ""), r)
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    return p


# -- a hostile shared cache ---------------------------------------------------------------------------------------
class Hostile(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, mode: str):
        self.root, self.mode = root, mode
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address):
        pass  # clients hang up on this server by design


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        srv: Hostile = self.server  # type: ignore[assignment]
        if srv.mode == "silent":
            time.sleep(3600)
            return
        path = srv.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        if path.name == "zarr.json" and srv.mode in ("escape", "huge"):
            body = _hostile_meta(json.loads(body), srv.mode)
        endless = srv.mode == "endless" and path.name != "zarr.json"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if not endless and srv.mode != "trickle":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        with contextlib.suppress(OSError):
            if endless:
                chunk = b"\0" * 65536
                while True:
                    self.wfile.write(chunk)
            elif srv.mode == "trickle" and path.name != "zarr.json":
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                self.wfile.write(body)


def _hostile_meta(meta: dict, mode: str) -> bytes:
    cm = meta.get("consolidated_metadata", {}).get("metadata")
    if isinstance(cm, dict):
        if mode == "escape":
            for name in list(cm):
                cm["../../../escaped-" + name] = cm.pop(name)
        else:
            for node in cm.values():
                if node.get("node_type") == "array":
                    node["shape"] = [2**40 for _ in node.get("shape", [])]
    elif meta.get("node_type") == "array" and mode == "huge":
        meta["shape"] = [2**40 for _ in meta.get("shape", [])]
    return json.dumps(meta).encode()


def part_hostile(w: World) -> Part:
    p = Part("hostile")
    timeout = 3.0
    for mode in ("escape", "huge", "endless", "trickle", "silent"):
        srv = Hostile(w.ref_cache, mode)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        cache = w.tmp / f"hostile-{mode}" / "cache"
        outside = w.tmp / f"hostile-{mode}" / "escaped-canary"
        env = {"MAD_CACHE": str(cache), "MAD_SHARED_CACHE": url, "MAD_PULL": "1", "MAD_SHARED_TIMEOUT": str(timeout),
               "MAD_SHARED_MAX_BYTES": str(64 * 2**20)}
        before = {str(x) for x in w.tmp.rglob("escaped-*")}
        r = mad(*w.extract_args, env=env, timeout=600)
        escaped = sorted({str(x) for x in w.tmp.rglob("escaped-*")} - before) + ([str(outside)] if outside.exists()
                                                                                  else [])
        bound = w.extract_seconds * 3 + 60
        if r.rc == 0:  # the shared cache was passed over: the stores were computed here, equal to the reference
            diffs = caches_diff(w.ref_cache, cache)
            served = any(s.get("source") == "shared" for s in last_json(r)["stores"].values())
            outcome = "computed its own stores"
            ok = not diffs and not served
        else:  # or the pull was refused: one clear line, nothing published from the server
            diffs, outcome = [], "stopped with one error line"
            ok = r.clean_error() and not stores_of(cache)
        p.check(ok and not escaped and r.seconds < bound and r.max_rss_mb < 4096,
                f"{mode} server: mad extract {outcome} in {r.seconds:.0f} s (bound {bound:.0f} s), peak RSS "
                f"{r.max_rss_mb:.0f} MB, nothing written outside the cache"
                + (f"; escaped {escaped}" if escaped else "") + (f"; {diffs[:2]}" if diffs else ""), r)
        key = next(k for k in stores_of(w.ref_cache) if k[0] == "image")[1]
        pull_cache = w.tmp / f"hostile-{mode}" / "pull"
        r = mad("store", "pull", key, "--from", url, "--cache", str(pull_cache), env=env, timeout=600)
        p.check(r.rc != 0 and not r.traceback and not stores_of(pull_cache) and r.seconds < 120,
                f"{mode} server: mad store pull refused in {r.seconds:.0f} s with one line, nothing published", r)
        srv.shutdown()
        srv.server_close()
    return p


# -- main ---------------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs per command (part kill)")
    ap.add_argument("--size", type=int, default=200, help="shapes world size (training images)")
    ap.add_argument("--steps", type=int, default=20, help="training steps of the distill runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts: {', '.join(PARTS)}")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        ap.error(f"--only: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="mad-reliability-"))
    t0 = time.perf_counter()
    parts: list[Part] = []
    try:
        w = setup(tmp, args.size, args.steps)
        for name in only:
            t = time.perf_counter()
            print(f"part {name}", flush=True)
            part = {"kill": lambda: part_kill(w, args.kills, rng), "bad": lambda: part_bad(w),
                    "concurrent": lambda: part_concurrent(w), "gc": lambda: part_gc(w),
                    "corrupt": lambda: part_corrupt(w), "disk": lambda: part_disk(w),
                    "hostile": lambda: part_hostile(w)}[name]()
            part.seconds = time.perf_counter() - t
            parts.append(part)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    total = time.perf_counter() - t0
    print(f"\nmad reliability run: {os.cpu_count()} cores, seed {args.seed}, {args.kills} kills per command, "
          f"total {total / 60:.1f} min")
    print(f"  {'part':<12}{'cases':>7}{'passed':>8}{'failed':>8}{'tracebacks':>12}{'seconds':>9}")
    for part in parts:
        print(f"  {part.name:<12}{part.cases:>7}{part.passed:>8}{part.cases - part.passed:>8}{part.tracebacks:>12}"
              f"{part.seconds:>9.0f}")
    failures = [f"{part.name}: {f}" for part in parts for f in part.failures]
    if failures:
        print("failures:")
        for f in failures:
            print(f"  {f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "cores": os.cpu_count(), "seconds": round(total, 1),
            "parts": [{"name": x.name, "cases": x.cases, "passed": x.passed, "tracebacks": x.tracebacks,
                       "seconds": round(x.seconds, 1), "failures": x.failures} for x in parts]}, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
