"""Plugins: modules outside mad that add tasks, readers, teachers or students by registering them on import.

Two ways to name them, both read once per process (so a ``mad`` subprocess sees them too):

- the environment variable ``MAD_PLUGINS``: module names separated by commas (``MAD_PLUGINS=my_tasks,lab.readers``);
- the entry-point group ``mad_pipeline.plugins`` of installed packages
  (``[project.entry-points."mad_pipeline.plugins"] toy = "my_package.toy_task"``).

Each module registers what it brings with the registries' own functions (``mad_pipeline.tasks.register_task``,
``mad_pipeline.data.register_reader``, ...). A module that cannot be imported is one clear error naming it.
"""

from __future__ import annotations

import importlib
import os

from .errors import InputError

ENV = "MAD_PLUGINS"
GROUP = "mad_pipeline.plugins"
_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    names = [m.strip() for m in os.environ.get(ENV, "").replace(";", ",").split(",") if m.strip()]
    from importlib.metadata import entry_points

    names += [ep.value.split(":")[0] for ep in entry_points(group=GROUP)]
    return list(dict.fromkeys(names))


def load_plugins() -> None:
    """Import every plugin module not imported yet."""
    for name in plugin_modules():
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"plugin {name!r} (from {ENV} or the {GROUP} entry points) cannot be imported: {e}") \
                from None


__all__ = ["ENV", "GROUP", "load_plugins", "plugin_modules"]
