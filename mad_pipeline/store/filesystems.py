"""fsspec filesystems for store URLs: ``http(s)://`` (read-only, tolerant of servers that ignore ``Range``) and
everything else fsspec knows (``s3://`` through s3fs).

S3: credentials and the endpoint come from the usual places (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_PROFILE``, and ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).
"""

from __future__ import annotations

import weakref

from ..errors import StoreError

READ_ONLY_PROTOCOLS = ("http", "https")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _http_fs_class():
    from fsspec.implementations.http import HTTPFileSystem

    class RangeTolerantHTTPFileSystem(HTTPFileSystem):
        """fsspec's HTTP filesystem that also works with servers that ignore ``Range`` (``python -m http.server``).

        When a byte range is asked for and the server answers 200 with the whole file instead of 206, the range is
        cut out locally (correct, if slower, for sharded arrays read partially).
        """

        async def _cat_file(self, url, start=None, end=None, **kwargs):
            if start is None and end is None:
                return await super()._cat_file(url, **kwargs)
            if start == end:
                return b""
            kw = self.kwargs.copy()
            kw.update(kwargs)
            headers = kw.pop("headers", {}).copy()
            headers["Range"] = await self._process_limits(url, start, end)
            kw["headers"] = headers
            session = await self.set_session()
            async with session.get(self.encode_url(url), **kw) as r:
                out = await r.read()
                self._raise_not_found_for_status(r, url)
                status = r.status
            if status != 206:
                out = out[slice(start, end)]
            return out

        async def set_session(self):
            new = self._session is None
            session = await super().set_session()
            if new and self.asynchronous:  # fsspec closes only its sync-mode sessions; close ours at exit too
                weakref.finalize(self, self.close_session, None, session)
            return session

    return RangeTolerantHTTPFileSystem


_HTTP_CLS = None


def filesystem(url: str, asynchronous: bool = False):
    """(fsspec filesystem, path inside it) for a URL. HTTP uses a Range-tolerant filesystem with sane timeouts."""
    global _HTTP_CLS
    protocol = protocol_of(url)
    if protocol in READ_ONLY_PROTOCOLS:
        try:
            import aiohttp
        except ImportError:
            raise StoreError(f"{url}: http(s):// shared caches need aiohttp (pip install 'mad-pipeline[http]')") \
                from None

        if _HTTP_CLS is None:
            _HTTP_CLS = _http_fs_class()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        fs = _HTTP_CLS(asynchronous=asynchronous, client_kwargs={"timeout": timeout})
        return fs, url.rstrip("/")
    try:
        from fsspec import url_to_fs

        return url_to_fs(url, asynchronous=asynchronous) if asynchronous else url_to_fs(url)
    except ImportError as e:
        raise StoreError(f"{url}: support for {protocol}:// is not installed ({e}); "
                         f"for s3:// install s3fs (pip install 'mad-pipeline[s3]')") from None
    except ValueError as e:
        raise StoreError(f"{url}: {e}") from None
