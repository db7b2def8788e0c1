"""``Connection``: how :class:`~service.client.api.BnlabClient` talks HTTP to one bnlab server.

The plumbing under the API's operations, kept apart from them: the API key and ``Accept``
headers, per-request timeouts, problem+json answers and transport failures as
:class:`~service.client.errors.BnlabError`, following ``next_cursor`` over pages, streaming a
file to disk whole or not at all, and opening an event stream for
:mod:`service.client.follow`. What to ask the server is :mod:`service.client.api`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

# httpx2: httpx's maintained successor, same API; Starlette's TestClient (which tests and the
# embedded reproduction server hand to this client) is built on it.
import httpx2 as httpx

from service.client.errors import BnlabError
from service.vocab import MAX_PAGE_SIZE

DEFAULT_SERVER = "http://127.0.0.1:8000"  # where `bnlab serve` listens by default


class Connection:
    """One bnlab server's HTTP session. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        http: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``http``: an existing httpx.Client to use as is (its base URL wins; not closed here).
        ``transport``: a transport for a client built here (httpx.MockTransport in tests)."""
        self.api_key = api_key
        self.timeout = timeout
        if http is not None:
            self._http, self._owns_http = http, False
            self.base_url = str(http.base_url).rstrip("/") or base_url
        else:
            self.base_url = base_url.rstrip("/")
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
            self._owns_http = True

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _timeout_arg(self, timeout: float | httpx.Timeout) -> dict[str, Any]:
        """Per-request timeouts on a client built here; a client passed in keeps its own
        (Starlette's TestClient, for one, does not take them)."""
        return {"timeout": timeout} if self._owns_http else {}

    @contextmanager
    def _transport_errors(self, failing: str) -> Iterator[None]:
        """Transport failures as BnlabError; ``failing`` names what failed ("connection to")."""
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BnlabError(
                f"cannot reach bnlab at {self.base_url}: {exc or type(exc).__name__} "
                "(is `bnlab serve` running? set --server or BNLAB_SERVER)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise BnlabError(f"bnlab at {self.base_url} did not answer in time: {exc}") from exc
        except httpx.TransportError as exc:
            raise BnlabError(f"{failing} bnlab at {self.base_url} failed: {exc}") from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: str | None = None,
    ) -> httpx.Response:
        """One request; non-2xx answers and transport failures become BnlabError."""
        clean_params = {k: v for k, v in (params or {}).items() if v is not None}
        extra = dict(headers or {})
        if accept:
            extra["Accept"] = accept
        with self._transport_errors("connection to"):
            response = self._http.request(
                method,
                path,
                params=clean_params,
                json=json_body,
                headers=self._headers(extra),
                **self._timeout_arg(self.timeout),
            )
        if response.status_code >= 400:
            raise BnlabError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _pages(
        self, path: str, params: Mapping[str, Any], page_size: int
    ) -> Iterator[dict[str, Any]]:
        """The items of every page of a listing, following ``next_cursor``; ``page_size`` is
        clamped to what the server takes (1 to MAX_PAGE_SIZE)."""
        limit = max(1, min(page_size, MAX_PAGE_SIZE))
        cursor: str | None = None
        while True:
            page = self._json("GET", path, params={**params, "limit": limit, "cursor": cursor})
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _download(self, path: str, destination: Path, default_name: str) -> Path:
        """Stream a GET's body to ``destination`` (a folder: the server's file name in it, else
        ``default_name``); the file appears whole or not at all. Returns the file's path."""
        headers = self._headers({"Accept": "application/octet-stream"})
        with (
            self._transport_errors("download from"),
            self._http.stream(
                "GET", path, headers=headers, **self._timeout_arg(self.timeout)
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise BnlabError.from_response(response)
            if destination.is_dir():
                destination = destination / _attachment_name(response, default_name)
            partial = destination.with_name(f".{destination.name}.part")
            try:
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                partial.replace(destination)
            finally:
                partial.unlink(missing_ok=True)
        return destination

    def _open_stream(
        self,
        path: str,
        params: Mapping[str, Any],
        last_event_id: str | None,
        read_timeout: float,
    ) -> AbstractContextManager[httpx.Response]:
        """A streamed GET of an event stream (what :func:`~service.client.follow.follow`
        reads), resuming after ``last_event_id`` when given."""
        headers = self._headers({"Accept": "text/event-stream", "Cache-Control": "no-cache"})
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = self._timeout_arg(httpx.Timeout(self.timeout, read=read_timeout))
        return self._http.stream("GET", path, params=params, headers=headers, **timeout)


def _attachment_name(response: httpx.Response, default: str) -> str:
    """The file name a Content-Disposition header suggests (its last path part only)."""
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "filename" and value.strip('"'):
            return Path(value.strip('"')).name
    return default
