"""The Python API: the stages for notebooks and scripts, and feature stores as xarray Datasets.

    import mad_pipeline as mad

    result = mad.extract(teacher="clip-vit-l", manifest="data.jsonl", data_root="images/")   # = mad extract
    images = mad.open_features(result.stores["image"].path)        # lazy xarray.Dataset; images.sel(image=h)
    feats = mad.features_for(["q0", "q1"], index=result.stores["index"].path, image=..., text=...)
    mad.export_store(result.stores["image"].path, to="faiss", out="index/", normalize=True)  # = mad store export

It lives beside the stages it calls (``mad_pipeline.stages.api``), like the CLI one layer above the library; the
package root re-exports it on first use. The stages are imported when first called, so ``open_features`` does not
load torch. See docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from mad_pipeline.cache import resolve_store
from mad_pipeline.features import features_for, open_features

__all__ = ["export_store", "extract", "features_for", "open_features", "resolve_store"]

_PATHS = ("data_root", "manifest", "cache", "out")


def _config(cls, options: dict, what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{what}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"expected some of: {', '.join(sorted(names))}")
    out = {k: Path(v).expanduser() if k in _PATHS and isinstance(v, str) else v for k, v in options.items()}
    if isinstance(out.get("cache"), Path):  # the stores' paths in the result then work from any directory
        out["cache"] = out["cache"].absolute()
    return cls(**out)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def extract(*, log=_stderr, **options):
    """``mad extract`` with keyword arguments (the command's options, underscores for dashes: ``teacher``,
    ``data_root``, ``manifest``, ``dataset``, ``split``, ``text_teacher``, ``weights``, ``cache``, ``device``,
    ``batch_size``, ``task``, ``progress`` ...). Returns the stage's ``ExtractResult``: ``stores[kind]`` has each
    store's ``path``, ``key`` and ``rows``. Messages go to ``log`` (default: stderr)."""
    from mad_pipeline.stages import extract as stage

    return stage.run(_config(stage.ExtractConfig, options, "extract"), log=log)


def export_store(store, **options):
    """``mad store export`` with keyword arguments: ``store`` (path, URL or key), ``to`` (npy, parquet, faiss),
    ``out``, ``normalize``, ``index`` (an index store: adds each row's sample ids), ``cache``, ``progress`` ...
    Returns the stage's ``ExportResult`` (where the files are, rows written and skipped)."""
    from mad_pipeline.stages import store_export as stage

    return stage.run(_config(stage.ExportConfig, {"store": store, **options}, "export_store"))
