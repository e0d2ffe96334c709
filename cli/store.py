"""``mad store ...``: look inside, check and share feature stores."""

from __future__ import annotations

import contextlib
import json
import os

import typer
from mad_pipeline.stages import store_info as stage
from rich.console import Console
from rich.table import Table

from mad_pipeline.errors import StoreError

from .app import store_app


def _printer(console: Console):
    """Print progress lines as they are: no rich markup (``pip install 'mad-pipeline[s3]'`` keeps its brackets)."""
    return lambda m: console.print(m, markup=False, highlight=False)


def _expand(where: str) -> str:
    """``~`` expanded in a local path (a quoted ``"~/x"`` or ``--opt=~/x`` reaches us unexpanded); URLs as they are."""
    return where if "://" in where else os.path.expanduser(where)


@contextlib.contextmanager
def _remote_errors(what: str):
    """A location that answers with an error (HTTP 403 / 500, S3 access denied, a timeout) is one error line."""
    try:
        yield
    except OSError as e:
        raise StoreError(f"{what}: {e}") from None


STORE_REF = "A store: its path (a .zarr directory) or URL, or its key (a unique prefix works) in --cache."


@store_app.command("info", help="Print a store's manifest and array shapes as a table. STORE is a path, or a "
                   "store key (or a unique prefix of one) in the local cache.\n\n"
                   "Examples:\n\n  mad store info ~/.cache/mad/stores/image/<key>.zarr\n\n  mad store info 764b5a3a")
def info_cmd(path: str = typer.Argument(..., help=STORE_REF, metavar="STORE"),
             cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Local cache, for a key."),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    info = stage.run(stage.StoreInfoConfig(path=path, cache=cache))
    if as_json:
        typer.echo(json.dumps(info))
        return
    console = Console()
    man = Table(title=f"{info['kind']} store", show_header=False)
    man.add_column("field", style="bold")
    man.add_column("value", overflow="fold")
    for k, v in info["manifest_rows"]:
        man.add_row(k, v)
    console.print(man)
    arr = Table(title="arrays")
    for col in ("name", "shape", "dtype", "chunks", "shards", "dims", "stored MB"):
        arr.add_column(col)
    for a in info["arrays"]:
        shards = str(tuple(a["shards"])) if a["shards"] else "-"
        arr.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])), shards,
                    ",".join(a["dims"]), f"{a['nbytes_stored'] / 1e6:.2f}")
    console.print(arr)


@store_app.command("ls", help="List the published stores in a cache (a directory, or a shared s3:// cache root): "
                   "kind, key, rows, teacher, the teacher's weights (sha256 of the tensor contents, or the hub "
                   "revision) and the dataset (reader, split, manifest file or data root), so two stores of one "
                   "teacher can be told apart.\n\nExamples:\n\n  mad store ls --cache .mad-cache\n\n"
                   "  mad store ls --cache s3://team-bucket/mad-cache")
def ls_cmd(cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE",
                                     help="Cache root, local or s3://."),
           kind: str = typer.Option(None, "--kind", help="Only this kind: image, text, index."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON list.")):
    from mad_pipeline.stages import store_ls

    with _remote_errors(f"cannot list {cache}"):
        rows = store_ls.run(store_ls.StoreLsConfig(cache=cache, kind=kind))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    title = f"{len(rows)} stores in {store_ls.cache_root(cache)}/stores"
    console = Console()
    console.print(_ls_table(rows, title, wide=console.width >= 150))


def _ls_table(rows: list[dict], title: str, wide: bool) -> Table:
    """One line per store on a wide terminal; narrower, each cell holds two facts (kind over key, teacher over
    weights, ...) so nothing is cut at 80 columns."""
    table = Table(title=title, show_lines=not wide)
    cols = ("kind", "key", "rows", "teacher", "weights", "dataset", "created", "MB") if wide else \
        ("kind / key", "rows / MB", "teacher / weights", "dataset / created")
    for col in cols:
        table.add_column(col, overflow="fold", ratio=1 if col.startswith("dataset") else None,
                         no_wrap=not col.startswith("dataset"), justify="right" if col in ("rows", "MB") else "left")
    for r in rows:
        created = (r["created"] or "")[:16].replace("T", " ")
        size = "-" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        if wide:
            table.add_row(r["kind"], r["key"][:12], str(r["rows"]), r["teacher"], r["weights"], r["dataset"],
                          created, size)
        else:
            table.add_row(f"{r['kind']}\n{r['key'][:12]}", f"{r['rows']}\n{size}", f"{r['teacher']}\n{r['weights']}",
                          f"{r['dataset']}\n{created}")
    return table


@store_app.command("verify", help="Check every chunk's crc32c checksum (every inner chunk of every shard) and the "
                   "manifest against the arrays. STORE is a path, a URL, or a store key (or a unique prefix of "
                   "one) in the local cache. Prints OK, or a table naming each corrupted chunk (array, chunk key, "
                   "file) and exits 1. A path that is not a store at all, or a location that cannot be read (an HTTP "
                   "error, no answer in time), is one error line (exit 2).\n\n"
                   "Examples:\n\n  mad store verify ~/.cache/mad/stores/image/<key>.zarr\n\n"
                   "  mad store verify 764b5a3a --cache /data/mad-cache\n\n"
                   "  mad store verify http://server/mad-cache/stores/image/<key>.zarr --json")
def verify_cmd(path: str = typer.Argument(..., help="A store: its directory or URL (http(s)://, s3://), or its key "
                                          "(a unique prefix works) in --cache.", metavar="STORE"),
               cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Local cache, for a key."),
               as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
               quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")):
    from mad_pipeline.stages import store_verify

    from mad_pipeline.progress import make_progress

    with _remote_errors(f"cannot read {path}"), make_progress(not (quiet or as_json)) as progress:
        rep = store_verify.run(store_verify.StoreVerifyConfig(path=path, cache=cache), progress=progress)
    if as_json:
        typer.echo(json.dumps(rep.as_dict()))
    elif rep.ok:
        typer.echo(f"OK {rep.path}: {rep.kind} store, {rep.arrays} arrays, {rep.chunks} chunks in {rep.chunk_files} "
                   f"files ({rep.bytes_read / 1e6:.1f} MB) checked in {rep.seconds:.1f} s")
    else:
        table = Table(title=f"{len(rep.problems)} problem(s) in {rep.path}")
        for col in ("array", "chunk", "problem", "file"):
            table.add_column(col, overflow="fold")
        for p in rep.problems:
            table.add_row(p.array, p.chunk or "-", p.message, p.file or "-")
        Console().print(table)
    if not rep.ok:
        raise typer.Exit(1)


@store_app.command("push", help="Publish stores to a shared cache root (a directory, or s3://bucket/prefix) "
                   "atomically: readers see the whole store or nothing. SOURCE is a store directory, a whole local "
                   "cache root (every published store in it) or a key in --cache. Stores already there are skipped."
                   "\n\nExamples:\n\n  mad store push ~/.cache/mad/stores/image/<key>.zarr /shared/mad-cache\n\n"
                   "  mad store push ~/.cache/mad s3://team-bucket/mad-cache")
def push_cmd(source: str = typer.Argument(..., help="Store directory, local cache root, or store key."),
             dest: str = typer.Argument(..., help="Shared cache root: a directory or s3://bucket/prefix."),
             cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Cache for a key."),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON list.")):
    from mad_pipeline.stages import store_share

    err = Console(stderr=True)
    with _remote_errors(f"pushing to {dest} failed"):
        done = store_share.push(store_share.PushConfig(source=_expand(source), dest=_expand(dest), cache=cache),
                                log=None if as_json else _printer(err))
    if as_json:
        typer.echo(json.dumps([t.as_dict() for t in done]))
        return
    for t in done:
        what = "already there" if t.skipped else f"{t.files} files, {t.bytes / 1e6:.1f} MB"
        typer.echo(f"{t.kind:>8} {t.key[:16]} -> {t.dest} ({what})")


@store_app.command("pull", help="Copy a store by key from a shared cache into the local cache (atomically: "
                   "partial/, verified, then a rename into stores/), so later runs work offline. Without --from, the "
                   "locations in MAD_SHARED_CACHE are tried in order.\n\nExamples:\n\n"
                   "  mad store pull <key> --from http://server/mad-cache\n\n"
                   "  mad store pull <key> --from s3://team-bucket/mad-cache --no-verify")
def pull_cmd(key: str = typer.Argument(..., help="Store key (a unique prefix works for directories and s3://)."),
             sources: list[str] = typer.Option(None, "--from", help="Shared cache root(s) (default: those in "
                                               "MAD_SHARED_CACHE)."),
             cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Local cache."),
             kind: str = typer.Option(None, "--kind", help="image, text, index or zeroshot (default: any)."),
             verify: bool = typer.Option(None, "--verify/--no-verify", help="Verify every chunk's checksum and the "
                                         "manifest of the copy before publishing it (the default; MAD_PULL_VERIFY=0 "
                                         "turns it off). --no-verify: for caches you trust."),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    from mad_pipeline.stages import store_share

    err = Console(stderr=True)
    cfg = store_share.PullConfig(key=key, sources=tuple(_expand(s) for s in sources or ()), cache=cache, kind=kind,
                                 verify=verify)
    with _remote_errors(f"pulling {key} failed"):
        t = store_share.pull(cfg, log=None if as_json else _printer(err))
    if as_json:
        typer.echo(json.dumps(t.as_dict()))
        return
    what = "already in the local cache" if t.skipped else f"{t.files} files, {t.bytes / 1e6:.1f} MB"
    typer.echo(f"{t.kind} {t.key[:16]} -> {t.dest} ({what})")


@store_app.command("gc", help="Clean the local cache: remove incomplete stores (interrupted builds, pulls and "
                   "pushes) that no live process holds, and with --older-than complete stores that no lookup has "
                   "served for that many days; the same for training's text views under derived/ (rebuilt when "
                   "needed). Never touches a store whose key is locked, nor a shared cache.\n\n"
                   "Examples:\n\n  mad store gc --dry-run\n\n  mad store gc --older-than 30")
def gc_cmd(cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Local cache."),
           older_than: float = typer.Option(None, "--older-than", help="Also remove complete stores (and text "
                                            "views) unused for this many days.", metavar="DAYS"),
           dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    from mad_pipeline.stages import store_share

    from mad_pipeline.errors import MadError

    if older_than is not None and older_than < 0:
        raise MadError("--older-than must be a number of days >= 0")
    res = store_share.gc(store_share.GcConfig(cache=cache, older_than_days=older_than, dry_run=dry_run))
    if as_json:
        typer.echo(json.dumps(res.as_dict()))
        return
    verb = "would remove" if dry_run else "removed"
    for r in res.removed:
        typer.echo(f"{verb} {r['path']} ({r['reason']}, {r['bytes'] / 1e6:.1f} MB)")
    for r in res.kept:
        typer.echo(f"kept {r['path']} ({r['reason']})")
    typer.echo(f"{verb} {len(res.removed)} item(s), {res.bytes_freed / 1e6:.1f} MB in {res.root}")
