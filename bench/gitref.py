"""Another version of this repository, importable without installing it (the benches' ``--compare-with REF``).

:func:`export_commit` writes a commit's files to a folder (``git archive``: no worktree, nothing in ``.git``
changes); :func:`snapshot_worktree` copies this checkout's working tree (uncommitted changes included) the same
way. Each then gets a *package tree*: a folder holding ``mad_pipeline/`` with its subpackages where an install
would put them, read from the version's own ``pyproject.toml`` (``[tool.setuptools] package-dir``: today
``mad_pipeline.stages`` <- ``stages/`` and ``mad_pipeline.cli`` <- ``cli/``, symlinked in place).

:func:`run_script` runs one of that version's scripts (e.g. its own ``bench/distill.py``) in a child process with
``PYTHONPATH=<package tree>``. Python's ``PathFinder`` (which reads ``sys.path``, ``PYTHONPATH`` first after the
script's folder) comes before the editable install's finder (appended to ``sys.meta_path`` by its ``.pth`` file),
so the child imports that version; the child is started from a folder without a ``mad_pipeline/`` and, after the
script, checks that every ``mad_pipeline`` module it imported came from the package tree (:class:`ChildRun`
``.outside`` lists any that did not; the caller refuses the measurement then).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mad_pipeline"
DEFAULT_PACKAGE_DIR = {PACKAGE: PACKAGE, f"{PACKAGE}.cli": "cli", f"{PACKAGE}.stages": "stages"}
COPIED = ("bench", "pyproject.toml")  # besides the package folders
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".pytest_cache", ".ruff_cache")


@dataclass
class Tree:
    """One version: ``src`` its files (``src/bench/distill.py`` ...), ``pkg`` the folder to put on ``PYTHONPATH``."""

    label: str
    commit: str
    dirty: bool
    src: Path
    pkg: Path


@dataclass
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    imported_from: str | None  # mad_pipeline.__file__ in the child
    modules: int  # mad_pipeline modules the child imported
    outside: list[str]  # those not from the package tree (must be empty)


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def resolve(ref: str) -> str:
    """The full commit id of ``ref`` (a commit, branch or tag of this repository); ValueError if there is none."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise ValueError(f"--compare-with {ref!r}: not a commit, branch or tag of {REPO}") from None


def package_dirs(src: Path) -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of the version in ``src`` (package -> folder), or today's mapping."""
    try:
        import tomllib

        conf = tomllib.loads((src / "pyproject.toml").read_text())
        dirs = conf["tool"]["setuptools"]["package-dir"]
    except (ImportError, OSError, KeyError, ValueError):
        return dict(DEFAULT_PACKAGE_DIR)
    return {k: v for k, v in dirs.items() if k == PACKAGE or k.startswith(PACKAGE + ".")} or dict(DEFAULT_PACKAGE_DIR)


def package_tree(src: Path, pkg: Path) -> Path:
    """``pkg/mad_pipeline`` copied from ``src``, its relocated subpackages symlinked in place; returns ``pkg``."""
    dirs = package_dirs(src)
    for name in sorted(dirs, key=lambda n: n.count(".")):  # the top package first
        origin, target = src / dirs[name], pkg.joinpath(*name.split("."))
        if not origin.is_dir():
            raise FileNotFoundError(f"{src}: no {dirs[name]}/ for package {name}")
        if name == PACKAGE:
            shutil.copytree(origin, target, ignore=IGNORE)
        else:
            if target.exists():  # a folder of the same name inside the package: the package-dir mapping wins
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(origin.resolve(), target_is_directory=True)
    return pkg


def export_commit(ref: str, dest: Path) -> Tree:
    """The files of commit ``ref`` in ``dest`` (``git archive | tar -x``) and their package tree next to it."""
    sha = resolve(ref)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=REPO, stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True, text=True)
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise RuntimeError(f"git archive {sha[:12]} | tar -x failed: {tar.stderr.strip()}")
    label = sha[:12] if sha.startswith(ref) else f"{ref} ({sha[:12]})"
    return Tree(label=label, commit=sha, dirty=False, src=dest,
                pkg=package_tree(dest, dest.with_name(f"pkg-{dest.name}")))


def snapshot_worktree(dest: Path) -> Tree:
    """This checkout's working tree as it is now (uncommitted changes included) copied to ``dest``, and its package
    tree: later edits do not reach a comparison under way."""
    dirs = package_dirs(REPO)
    paths = sorted({*dirs.values(), *COPIED})
    dest.mkdir(parents=True)
    for rel in paths:
        origin = REPO / rel
        if origin.is_dir():
            shutil.copytree(origin, dest / rel, ignore=IGNORE)
        elif origin.exists():
            shutil.copy2(origin, dest / rel)
    sha = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", *paths))
    label = f"working tree (HEAD {sha[:12]}{', with uncommitted changes' if dirty else ''})"
    return Tree(label=label, commit=sha, dirty=dirty, src=dest,
                pkg=package_tree(dest, dest.with_name(f"pkg-{dest.name}")))


# Runs the script as `python script args` would (its folder first on sys.path, __main__), then reports where the
# mad_pipeline modules came from. -c puts '' (the working folder) first on sys.path: replaced by the script's folder.
_CHILD = r"""
import json, os, runpy, sys
pkg, script, report = sys.argv[1:4]
sys.argv = [script, *sys.argv[4:]]
sys.path[0] = os.path.dirname(script)
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    mods = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())
            if n == "mad_pipeline" or n.startswith("mad_pipeline.")}
    outside = sorted(n for n, f in mods.items() if f and not os.path.abspath(f).startswith(pkg + os.sep))
    with open(report, "w") as f:
        json.dump({"imported_from": mods.get("mad_pipeline"), "modules": len(mods), "outside": outside}, f)
sys.exit(code)
"""


def run_script(tree: Tree, script: str, args: list[str], workdir: Path) -> ChildRun:
    """``tree``'s own ``script`` (relative to its root) run with ``args`` in a child process that imports
    ``tree``'s ``mad_pipeline`` (see the module docstring); ``workdir`` is its working folder."""
    report = workdir / f"imports-{os.getpid()}-{tree.src.name}.json"
    env = {**os.environ, "PYTHONPATH": str(tree.pkg)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tree.pkg), str(tree.src / script), str(report), *args],
                          cwd=workdir, env=env, capture_output=True, text=True)
    info = json.loads(report.read_text()) if report.exists() else {"imported_from": None, "modules": 0,
                                                                    "outside": ["(no report)"]}
    report.unlink(missing_ok=True)
    return ChildRun(proc.returncode, proc.stdout, proc.stderr, info["imported_from"], info["modules"],
                    info["outside"])


def probe(tree: Tree, workdir: Path) -> str:
    """``mad_pipeline.__file__`` (and its stages' and cli's) as a child with ``tree``'s ``PYTHONPATH`` imports them;
    RuntimeError unless all come from the package tree."""
    code = ("import importlib, json, sys\n"
            "names = ['mad_pipeline', 'mad_pipeline.stages', 'mad_pipeline.cli', 'mad_pipeline.training']\n"
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")
    env = {**os.environ, "PYTHONPATH": str(tree.pkg)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree.label}: importing mad_pipeline failed:\n{proc.stderr[-2000:]}")
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {n: f for n, f in files.items() if not os.path.abspath(f).startswith(str(tree.pkg) + os.sep)}
    if bad:
        raise RuntimeError(f"{tree.label}: a child with PYTHONPATH={tree.pkg} imports {bad} (not that version)")
    return files["mad_pipeline"]
