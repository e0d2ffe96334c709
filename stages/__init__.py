"""Stages: each module has a frozen config dataclass and ``run(cfg) -> result``. They call the library only."""
