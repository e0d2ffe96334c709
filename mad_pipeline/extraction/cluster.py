"""The dask.distributed cluster of a distributed extraction: a local one (``--workers N``) or an existing one
(``--scheduler ADDRESS``), started or connected only when a store must really be computed.

A local cluster has one single-threaded worker *process* per worker. On a machine with CUDA GPUs each worker is pinned
to one GPU with ``CUDA_VISIBLE_DEVICES`` (round robin when there are more workers than GPUs): through dask-cuda's
``LocalCUDACluster`` when it is installed, else through each worker's environment. Worker processes are started
non-daemonic, so that each can run its own DataLoader decode processes (``--num-workers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import InputError, MadError

CONNECT_TIMEOUT_S = 30


class Pool:
    """The dask client of one ``mad extract``: ``client`` starts (or connects to) the cluster on first use."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, device: str = "auto",
                 log: Callable[[str], None] = print):
        if workers is not None and scheduler is not None:
            raise InputError("--workers and --scheduler: give one of them (--workers starts a local cluster, "
                             "--scheduler uses an existing one)")
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: must be at least 1")
        self.workers, self.scheduler, self.device, self.log = workers, scheduler, device, log
        self._client = None
        self._cluster = None
        self.geometries: dict = {}  # (teacher, tower) -> geometry, asked of a worker once

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def client(self):
        return self.connect()

    def connect(self):
        """The client: the cluster is started (or connected to) the first time."""
        if self._client is None:
            self._client = self._connect() if self.scheduler else self._local()
            n = len(self._client.scheduler_info(n_workers=-1).get("workers", {}))
            self.log(f"dask: {n} worker(s), scheduler {self._client.scheduler.address}, dashboard "
                     f"{dashboard(self._client)}")
        return self._client

    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _connect(self):
        import dask
        from distributed import Client

        timeout = dask.config.get("distributed.comm.timeouts.connect")  # 30 s unless configured
        try:
            client = Client(self.scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(f"--scheduler {self.scheduler}: cannot connect within {timeout} "
                             f"({type(e).__name__}: {e})") from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            client.close()
            raise InputError(f"--scheduler {self.scheduler}: no worker joined within {CONNECT_TIMEOUT_S} s "
                             "(start some with `dask worker ADDRESS`)") from None
        return client

    def _local(self):
        import dask
        from distributed import Client

        with dask.config.set({"distributed.worker.daemon": False}):
            self._cluster = _local_cluster(self.workers, self.device)
        return Client(self._cluster, set_as_default=False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _gpus(device: str) -> int:
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _local_cluster(n: int, device: str):
    """``n`` single-threaded worker processes; on CUDA machines each pinned to one GPU."""
    from distributed import LocalCluster

    common = {"dashboard_address": ":0", "silence_logs": logging.WARNING}
    gpus = _gpus(device)
    if gpus == 0:
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, **common)
    visible = [str(i % gpus) for i in range(n)]
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return _pinned_cluster(visible, common)
    if n <= gpus:
        return LocalCUDACluster(n_workers=n, threads_per_worker=1, CUDA_VISIBLE_DEVICES=",".join(visible), **common)
    return _pinned_cluster(visible, common)  # more workers than GPUs: LocalCUDACluster runs one per GPU


def _pinned_cluster(visible: list[str], common: dict):
    """A cluster of Nanny-managed worker processes, worker i seeing only GPU ``visible[i]``."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu-{i}-{v}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": v}}}
               for i, v in enumerate(visible)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": common["dashboard_address"]}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=common["silence_logs"])


def dashboard(client) -> str:
    """The dashboard's address, or why there is none."""
    try:
        if "dashboard" in client.scheduler_info().get("services", {}):
            return client.dashboard_link
    except (KeyError, OSError, MadError):
        pass
    return "not served (pip install bokeh to get it)"
