"""mad: offline teacher features and Multimodal Adaptive Distillation.

The Python API (see docs/python-api.md), importable from here::

    import mad_pipeline as mad
    result = mad.extract(teacher="clip-vit-l", manifest="data.jsonl", data_root="images/")
    images = mad.open_features(result.stores["image"].path)      # a lazy xarray.Dataset: images.sel(image=h)
    feats = mad.features_for(["q0"], index=result.stores["index"].path, image=result.stores["image"].path)
    mad.export_store(result.stores["image"].path, to="faiss", out="index/", normalize=True)

They live in ``mad_pipeline.stages.api`` and are imported on first use, so ``import mad_pipeline.<module>`` stays light.

Layout: imports only go down (``mad_pipeline.cli`` -> ``mad_pipeline.stages`` -> the library) and never in a cycle.

- ``mad_pipeline.cli``         the ``mad`` command line (Typer): parses arguments, calls one stage, prints its result
- ``mad_pipeline.stages``      one module per command: a frozen config dataclass and ``run(cfg)``; library calls only;
                               ``stages.api`` is the Python API over them (``mad_pipeline.extract`` ...)

The library:

- ``mad_pipeline.data``        datasets: the JSONL manifest and the benchmark readers (a registry plugins can add to),
                               deterministic low-shot subsets, safe image decoding
- ``mad_pipeline.teachers``    the teacher registry and the frozen open_clip / transformers teachers, with their
                               token-level forwards
- ``mad_pipeline.extraction``  stage 1: inputs decoded and preprocessed in workers, the teacher forward, background
                               shard writes, each store got or built by its content key; the teacher's zero-shot store
- ``mad_pipeline.store``       the Zarr feature-store format: layout, resumable writer with atomic publication,
                               reader, verification, and push/pull to shared locations
- ``mad_pipeline.cache``       the content-hash cache: where the store of a key lives (locally or in a read-only
                               shared cache) and the per-key lock that keeps two runs from racing
- ``mad_pipeline.tasks``       everything that depends on the benchmark (VQA v2, SNLI-VE, VCR; a registry): label
                               space, zero-shot candidates, task loss, predictions, official metrics
- ``mad_pipeline.losses``      the MAD objective: token alignment and selection, confidence weighting, adaptive
                               alpha (pure torch)
- ``mad_pipeline.students``    the students that are fine-tuned and distilled (a registry; ViLT)
- ``mad_pipeline.training``    stage 2: a split's samples and their store rows, batches with teacher targets, the
                               training loop, evaluation, exact-resume checkpoints
- ``mad_pipeline.pipeline``    ``mad run``: the YAML schema, the stage plan and its keys, the results table
- ``mad_pipeline.shapes``      the shipped shapes world (a generator writing the official VQA v2, SNLI-VE and VCR
                               formats) and the training of its ``shapes-clip`` teacher

Single modules: ``features`` (stores as lazy xarray Datasets, a sample's features through the index), ``errors``
(user-facing errors: one line, exit code 2), ``hashing`` (content hashes and canonical JSON, the basis of every
key), ``settings`` (settings dataclasses that describe their own fields), ``plugins`` (modules that register tasks,
readers, teachers or students), ``jsonio`` (atomic JSON files), ``progress`` (progress bars), ``versions`` (library
versions recorded in manifests), ``testhooks`` (fixed points where tests pause a process or inject a full disk;
inert otherwise).
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

__all__ = ["__version__", "export_store", "extract", "features_for", "open_features"]
_API = ("export_store", "extract", "features_for", "open_features", "resolve_store")

if TYPE_CHECKING:
    from .stages.api import export_store, extract, features_for, open_features, resolve_store  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        from .stages import api

        return getattr(api, name)
    raise AttributeError(f"module 'mad_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
