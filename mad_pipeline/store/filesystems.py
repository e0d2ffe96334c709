"""fsspec filesystems for store URLs: ``http(s)://`` (read-only, bounded, tolerant of servers that ignore ``Range``)
and everything else fsspec knows (``s3://`` through s3fs).

Every HTTP request is bounded in time and size, so a misbehaving server can neither hang a run nor fill its memory:

- ``MAD_SHARED_TIMEOUT`` seconds (default 60) to connect and start answering; after that, the body must arrive at an
  average of at least ``MAD_SHARED_MIN_RATE`` bytes/s (default 16384), so an object of ``n`` bytes gets
  ``MAD_SHARED_TIMEOUT + n / MAD_SHARED_MIN_RATE`` seconds in all, however the server spaces its bytes;
- no object larger than the caller's bound (what the store's metadata allows for that key) nor, in any case, than
  ``MAD_SHARED_MAX_BYTES`` (default 512 MiB) is read: the answer is cut off as soon as it goes past.

A host that does not answer in time or refuses the connection is *unreachable* for the rest of the process: later
requests to it fail at once instead of waiting again.

S3: credentials and the endpoint come from the usual places (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_PROFILE``, and ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError

READ_ONLY_PROTOCOLS = ("http", "https")
TIMEOUT_ENV = "MAD_SHARED_TIMEOUT"
MIN_RATE_ENV = "MAD_SHARED_MIN_RATE"
MAX_BYTES_ENV = "MAD_SHARED_MAX_BYTES"
# protocol -> (the package it needs, the extra of mad-pipeline that brings it)
_NEEDS = {"http": ("aiohttp", "http"), "https": ("aiohttp", "http"), "s3": ("s3fs", "s3")}


class SetupError(StoreError):
    """Shared locations cannot be used at all as installed or configured (a missing library, a bad ``MAD_SHARED_*``
    value): a lookup stops with this one line rather than skipping the location and recomputing everything."""


class SupportMissing(SetupError):
    """The library a location's protocol needs is not installed: a problem of the install, not of the location."""


class RemoteError(OSError):
    """A shared location answered, but wrongly: an HTTP error status, or more bytes than allowed."""


class TooLarge(RemoteError):
    """An answer longer than the store's metadata (or ``MAD_SHARED_MAX_BYTES``) allows."""


class Unreachable(RemoteError):
    """No connection, or no complete answer in time; the host is skipped for the rest of the process."""


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


# ---------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    timeout: float = 60.0
    min_rate: float = 16384.0
    max_bytes: int = 512 << 20

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(_env_number(TIMEOUT_ENV, d.timeout, "seconds"), _env_number(MIN_RATE_ENV, d.min_rate, "bytes/s"),
                   int(_env_number(MAX_BYTES_ENV, d.max_bytes, "bytes")))

    def bound(self, max_bytes: int | None) -> int:
        """The most bytes one answer may have: the caller's bound, never more than ``max_bytes``."""
        return self.max_bytes if max_bytes is None else min(int(max_bytes), self.max_bytes)

    def deadline(self, start: float, received: int) -> float:
        """When the next byte is due, ``received`` bytes into an answer that started at ``start``."""
        return start + self.timeout + received / self.min_rate


def _env_number(name: str, default: float, unit: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SetupError(f"{name}={raw!r}: expected a positive number of {unit}")
    return value


def check_size(where: str, n: int, max_bytes: int | None) -> None:
    limit = Limits.from_env().bound(max_bytes)
    if n > limit:
        raise TooLarge(f"{where}: larger than the {limit} bytes the store's metadata allows (or {MAX_BYTES_ENV})")


# ---------------------------------------------------------------------- unreachable hosts
_UNREACHABLE: dict[str, str] = {}  # "scheme://host:port" -> why


def host_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


def check_reachable(url: str) -> None:
    why = _UNREACHABLE.get(host_of(url))
    if why is not None:
        raise Unreachable(f"{host_of(url)}: unreachable earlier in this run ({why}); not asked again")


def mark_unreachable(url: str, why: str) -> None:
    _UNREACHABLE.setdefault(host_of(url), why)


def forget_unreachable() -> None:
    """Ask every host again (hosts marked unreachable are otherwise skipped until the process ends)."""
    _UNREACHABLE.clear()


# ---------------------------------------------------------------------- reads with bounds
def fetch_many(fs, paths: dict[str, int | None]) -> dict[str, bytes | BaseException]:
    """The bytes at each path of a remote filesystem (concurrently), or the exception that reading it raised;
    ``paths`` maps each path to the most bytes it may have (None: ``MAD_SHARED_MAX_BYTES``)."""
    if not paths:
        return {}
    if getattr(fs, "bounded", False):  # our HTTP filesystem: bounded while reading
        from fsspec.asyn import sync

        async def gather():
            return await asyncio.gather(*(fs._cat_file(p, max_bytes=m) for p, m in paths.items()),
                                        return_exceptions=True)

        return dict(zip(paths, sync(fs.loop, gather), strict=True))
    got = fs.cat(list(paths), on_error="return")
    if not isinstance(got, dict):  # a single path comes back bare
        got = {next(iter(paths)): got}
    out: dict[str, bytes | BaseException] = {}
    for p, m in paths.items():
        v = got.get(p, FileNotFoundError(p))
        if isinstance(v, bytes):
            try:
                check_size(p, len(v), m)
            except TooLarge as e:
                v = e
        out[p] = v
    return out


def read_local(path: str, max_bytes: int | None) -> bytes:
    """A local file's bytes, refused (before reading) when larger than allowed."""
    p = Path(path)
    check_size(path, p.stat().st_size, max_bytes)
    return p.read_bytes()


def _unreachable(url: str, why: str) -> Unreachable:
    mark_unreachable(url, why)
    return Unreachable(f"{url}: {why}")


async def _bounded_get(fs, url: str, headers: dict, kw: dict, max_bytes: int | None) -> tuple[int, bytes]:
    """GET ``url`` within the limits: (status, body). Raises FileNotFoundError (404), RemoteError (other errors),
    TooLarge, or Unreachable (no connection, or too slow: the host is then skipped for the rest of the process)."""
    import aiohttp

    check_reachable(url)
    lim = Limits.from_env()
    limit = lim.bound(max_bytes)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def due(aw, received: int):  # ``aw``, by the time the next byte is due
        left = lim.deadline(start, received) - loop.time()
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(aw, left)

    session = await fs.set_session()
    try:
        r = await due(session.get(fs.encode_url(url), headers=headers, **kw), 0)
    except asyncio.TimeoutError:
        raise _unreachable(url, f"no answer within {lim.timeout:g} s ({TIMEOUT_ENV})") from None
    except aiohttp.ClientConnectionError as e:
        raise _unreachable(url, f"{type(e).__name__}: {e}") from None
    try:
        if r.status == 404:
            raise FileNotFoundError(url)
        if r.status >= 400:
            raise RemoteError(f"{url}: HTTP {r.status} {r.reason or ''}".rstrip())
        if r.content_length is not None and r.content_length > limit:
            raise TooLarge(f"{url}: {r.content_length} bytes announced, more than the {limit} the store's metadata "
                           f"allows (or {MAX_BYTES_ENV})")
        body = bytearray()
        while chunk := await due(r.content.readany(), len(body)):
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"{url}: more than the {limit} bytes the store's metadata allows (or {MAX_BYTES_ENV}); "
                               f"answer cut off")
    except asyncio.TimeoutError:
        r.close()
        raise _unreachable(url, f"answer slower than {lim.min_rate:g} bytes/s after {lim.timeout:g} s "
                                f"({MIN_RATE_ENV}, {TIMEOUT_ENV})") from None
    except aiohttp.ClientError as e:
        r.close()
        raise RemoteError(f"{url}: {type(e).__name__}: {e}") from None
    except BaseException:
        r.close()
        raise
    r.release()
    return r.status, bytes(body)


async def _within_deadline(url: str, answer):
    """Await ``answer`` (a request to ``url``'s host) within ``MAD_SHARED_TIMEOUT``; a host that misses it is marked
    unreachable."""
    check_reachable(url)
    timeout = Limits.from_env().timeout
    try:
        return await asyncio.wait_for(answer, timeout)
    except asyncio.TimeoutError:
        raise _unreachable(url, f"no answer within {timeout:g} s") from None


def _http_fs_class():
    from fsspec.implementations.http import HTTPFileSystem

    class BoundedHTTPFileSystem(HTTPFileSystem):
        """fsspec's HTTP filesystem with every read bounded in time and size (see the module docstring), and that
        also works with servers that ignore ``Range`` (``python -m http.server``): when a byte range is asked for
        and the server answers 200 with the whole file instead of 206, the range is cut out locally."""

        bounded = True

        async def _cat_file(self, url, start=None, end=None, max_bytes=None, **kwargs):
            kw = self.kwargs.copy()
            kw.update(kwargs)
            headers = kw.pop("headers", {}).copy()
            ranged = start is not None or end is not None
            if ranged:
                if start == end:
                    return b""
                headers["Range"] = await self._process_limits(url, start, end)
            status, out = await _bounded_get(self, url, headers, kw, max_bytes)
            if ranged and status != 206:
                out = out[slice(start, end)]
            return out

        async def _exists(self, path, **kwargs):
            return await _within_deadline(path, super()._exists(path, **kwargs))

        async def _info(self, url, **kwargs):
            return await _within_deadline(url, super()._info(url, **kwargs))

        async def set_session(self):
            new = self._session is None
            session = await super().set_session()
            if new and self.asynchronous:  # fsspec closes only its sync-mode sessions; close ours at exit too
                weakref.finalize(self, self.close_session, None, session)
            return session

    return BoundedHTTPFileSystem


_HTTP_CLS = None


def _missing(url: str, protocol: str, err: ImportError) -> SupportMissing:
    if protocol in _NEEDS:
        package, extra = _NEEDS[protocol]
        return SupportMissing(f"{url}: {protocol}:// locations need {package}, which is not installed "
                              f"(pip install 'mad-pipeline[{extra}]')")
    return SupportMissing(f"{url}: support for {protocol}:// is not installed ({err})")


def filesystem(url: str, asynchronous: bool = False):
    """(fsspec filesystem, path inside it) for a URL. HTTP uses the bounded, Range-tolerant filesystem above."""
    global _HTTP_CLS
    protocol = protocol_of(url)
    if protocol in READ_ONLY_PROTOCOLS:
        try:
            import aiohttp
        except ImportError as e:
            raise _missing(url, protocol, e) from None
        if _HTTP_CLS is None:
            _HTTP_CLS = _http_fs_class()
        lim = Limits.from_env()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=lim.timeout, sock_read=None)
        fs = _HTTP_CLS(asynchronous=asynchronous, client_kwargs={"timeout": timeout})
        return fs, url.rstrip("/")
    try:
        from fsspec import url_to_fs

        if protocol in _NEEDS:  # fsspec keeps an imported implementation; ask for the package itself
            importlib.import_module(_NEEDS[protocol][0])
        # a fresh instance: fsspec's instance cache would keep one made under other credentials or endpoint
        # settings (the environment), e.g. in a notebook or a test session that changes them
        kw = {"skip_instance_cache": True, **({"asynchronous": True} if asynchronous else {})}
        return url_to_fs(url, **kw)
    except ImportError as e:
        raise _missing(url, protocol, e) from None
    except ValueError as e:
        raise StoreError(f"{url}: {e}") from None
