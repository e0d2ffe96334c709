"""The Python distributions ``bench/gpu_extract.py`` and ``bench/distill.py`` need beyond torch, for a GPU machine
without network.

    python bench/gpu_deps.py freeze > bench/wheels/requirements.txt   # here: name==version of what the bench imports
    python bench/gpu_deps.py missing bench/wheels/requirements.txt   # there: the names not installed (stdlib only)

``freeze`` imports the bench's whole path (and loads a tiny teacher through the registry, which imports what loading
needs), then maps the imported modules to their distributions. Torch and what ships with it (torchvision, triton, the
CUDA libraries, sympy, ...) are left out: a CUDA build of torch is gigabytes and must be on the GPU machine already.
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
    return sorted(f"{d}=={metadata.version(d)}" for d in dists if not _excluded(d))


def missing(requirements: str) -> list[str]:
    out = []
    with open(requirements) as f:
        lines = f.read().splitlines()
    for line in lines:
        name = line.split("==")[0].strip()
        if not name or name.startswith("#"):
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(line.strip())
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "freeze":
        print("\n".join(freeze()))
    elif len(sys.argv) == 3 and sys.argv[1] == "missing":
        print("\n".join(missing(sys.argv[2])))
    else:
        raise SystemExit(__doc__)
