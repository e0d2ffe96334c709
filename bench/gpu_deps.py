"""The Python distributions ``bench/gpu_extract.py``, ``bench/distill.py`` and ``bench/lowshot.py`` need beyond
torch, for a GPU machine without network.

    python bench/gpu_deps.py freeze > bench/wheels/requirements.txt   # here: name==version of what the benches need
    python bench/gpu_deps.py missing bench/wheels/requirements.txt [bench/wheels]   # there: the names not installed
                                                                     # (and carried), stdlib only

``freeze`` imports the bench's whole path (and loads a tiny teacher through the registry, which imports what loading
needs), then maps the imported modules to their distributions, and adds what the package requires (recursively).
Torch and what ships with it (torchvision, triton, the CUDA libraries, sympy, ...) are left out: a CUDA build of
torch is gigabytes and must be on the GPU machine already.
"""

from __future__ import annotations

import contextlib
import io
import sys
from importlib import metadata

TORCH_FAMILY = ("torch", "torchvision", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock",
                "setuptools", "pip", "wheel", "mad-pipeline")


def _excluded(dist: str) -> bool:
    d = dist.lower().replace("_", "-")
    return d in TORCH_FAMILY or d.startswith(("nvidia-", "cuda-"))


def freeze() -> list[str]:
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import gpu_extract  # noqa: F401 - everything the bench imports at the top
    import torch

    from mad_pipeline.extraction import device, reader, runner  # noqa: F401
    from mad_pipeline.store import layout, writer  # noqa: F401

    with tempfile.TemporaryDirectory() as d:
        teacher, _ = gpu_extract.build_teacher("tiny", Path(d), "cpu", "fp32")
        teacher.encode_image_tokens(torch.zeros(1, 3, teacher.image_size, teacher.image_size))
        with contextlib.redirect_stdout(io.StringIO()):
            gpu_extract.print_tables([], {"device_name": "cpu"})  # rich's table and console modules
    # stage 2 (bench/distill.py --device cuda): the trainer's whole path, the shapes world, the ViLT students
    import distill  # noqa: F401
    import numcodecs  # noqa: F401
    import zarr.codecs  # noqa: F401
    from mad_pipeline.stages.distill import build_training  # noqa: F401

    from mad_pipeline.data import load_dataset  # noqa: F401
    from mad_pipeline.shapes.formats import write_dataset  # noqa: F401
    from mad_pipeline.students import vilt  # noqa: F401  (transformers' ViLT: transformers is already listed)
    from mad_pipeline.training.trainer import Trainer  # noqa: F401

    owners = metadata.packages_distributions()
    dists = {d for mod in list(sys.modules) for d in owners.get(mod.split(".")[0], [])}
    # and what the package requires, whole: `mad run` (bench/lowshot.py's shards) imports more than these benches
    dists |= requirement_closure("mad-pipeline")
    return sorted(f"{d}=={metadata.version(d)}" for d in dists if not _excluded(d))


def requirement_closure(dist: str) -> set[str]:
    """The installed distributions ``dist`` requires, recursively, with the extras it asks of them (its own extras
    left out)."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(dist, ())]
    out: set[str] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            try:
                out.add(metadata.metadata(req.name)["Name"])
            except metadata.PackageNotFoundError:
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    return out


def missing(requirements: str, wheels: str | None = None) -> list[str]:
    """The requirements not installed here. With ``wheels`` (a folder), only those it holds a wheel for: the others
    (left out by ``wheels.sh``'s HAVE, say) are named on stderr, and the import check after the install tells whether
    they were needed."""
    import os
    import re

    out = []
    with open(requirements) as f:
        lines = f.read().splitlines()
    def norm(name: str) -> str:  # a distribution's name as wheel files spell it
        return re.sub(r"[-_.]+", "_", name).lower()

    carried = {norm(w.split("-")[0]) for w in os.listdir(wheels) if w.endswith(".whl")} if wheels else None
    for line in lines:
        name = line.split("==")[0].strip()
        if not name or name.startswith("#"):
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            if carried is None or norm(name) in carried:
                out.append(line.strip())
            else:
                print(f"gpu_deps.py: {name} is not installed and has no wheel in {wheels}: skipped", file=sys.stderr)
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "freeze":
        print("\n".join(freeze()))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "missing":
        print("\n".join(missing(*sys.argv[2:])))
    else:
        raise SystemExit(__doc__)
