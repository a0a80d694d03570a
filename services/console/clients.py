"""The console's only way to the mesh's state: the services' HTTP APIs (httpx).

Reads raise :class:`NotFound` (a 404 page) or :class:`Unavailable` (a section that says the
service does not answer); actions raise :class:`ActionFailed` with the service's reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import httpx


class NotFound(Exception):
    """The service answered 404 for what a page asked about."""


class Invalid(Exception):
    """The service refused what a page asked for (422): a bad filter or sort."""


class Unavailable(Exception):
    """The service did not answer, or answered something other than what was asked."""


class ActionFailed(Exception):
    """An action the service refused or could not do; the message is its reason."""


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(body, dict) and "error" in body:
        details = body.get("details")
        return f"{body['error']}" + (f" ({details})" if details else "")
    return f"HTTP {response.status_code}: {str(body)[:300]}"


class ReadCache:
    """Answers of slow reads (the registry reads whole DLQ topics for a dead-letter page),
    kept while what they depend on (``version``: e.g. the DLQ end offsets) is unchanged,
    for ``ttl_s`` at most; :meth:`clear` after an action that changes them."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[Hashable, float, Any]] = {}

    async def get(
        self, key: Hashable, version: Hashable, load: Callable[[], Awaitable[Any]]
    ) -> Any:
        hit = self._entries.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] == version and now - hit[1] < self.ttl_s:
            return hit[2]
        value = await load()
        self._entries[key] = (version, now, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class Health:
    name: str
    url: str
    alive: bool
    detail: str
    uptime_s: float | None = None
    version: str | None = None


class MeshClient:
    """One pooled HTTP client per base URL; every call is bounded by ``timeout_s``."""

    def __init__(
        self,
        *,
        registry: str,
        ingest: str,
        predictor: str,
        monitor: str,
        token: str,
        timeout_s: float = 5.0,
    ) -> None:
        self.urls = {
            "registry": registry.rstrip("/"),
            "ingest": ingest.rstrip("/"),
            "predictor": predictor.rstrip("/"),
            "monitor": monitor.rstrip("/"),
        }
        self._token = token
        self._http = httpx.AsyncClient(
            timeout=timeout_s, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ plumbing
    async def get(self, service: str, path: str, **params: Any) -> Any:
        url = self.urls[service] + path
        clean = {k: v for k, v in params.items() if v is not None and v != ""}
        try:
            response = await self._http.get(url, params=clean)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{service} does not answer ({type(exc).__name__})") from None
        if response.status_code == 404:
            raise NotFound(_reason(response))
        if response.status_code == 422:
            raise Invalid(_reason(response))
        if response.status_code >= 400:
            raise Unavailable(f"{service}: {_reason(response)}")
        try:
            return response.json()
        except ValueError:
            raise Unavailable(f"{service} at {url} did not answer JSON") from None

    async def post(self, service: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            response = await self._http.post(self.urls[service] + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ActionFailed(f"{service} does not answer ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise ActionFailed(f"{service} refused: {_reason(response)}")
        return response.json()

    async def optional(self, service: str, path: str, **params: Any) -> Any | None:
        """``None`` when the service does not answer or has nothing there (a section that
        says "no data yet")."""
        try:
            return await self.get(service, path, **params)
        except (NotFound, Unavailable):
            return None

    async def health(self, name: str, url: str) -> Health:
        try:
            response = await self._http.get(url.rstrip("/") + "/healthz", timeout=1.5)
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            return Health(name, url, False, type(exc).__name__)
        if response.status_code != 200:
            return Health(name, url, False, f"HTTP {response.status_code}")
        return Health(
            name, url, True, "ok", uptime_s=body.get("uptime_s"), version=body.get("version")
        )

    async def healths(self, services: dict[str, str]) -> list[Health]:
        return list(await asyncio.gather(*(self.health(n, u) for n, u in services.items())))

    # ------------------------------------------------------------------ registry reads
    async def runs(self, **filters: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("registry", "/runs", **filters)
        return result

    async def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("registry", f"/runs/{run_id}")
        return result

    async def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get("registry", "/models")
        return result

    async def model(self, name: str) -> dict[str, Any]:
        """One model's ``{model_name, latest_version, aliases, history}`` (each alias's
        moves, newest first)."""
        result: dict[str, Any] = await self.get("registry", f"/models/{name}")
        return result

    async def versions(self, name: str, *, limit: int, offset: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(
            "registry", f"/models/{name}/versions", limit=limit, offset=offset
        )
        return result

    async def version(self, name: str, version: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("registry", f"/models/{name}/versions/{version}")
        return result

    async def datasets(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get("registry", "/datasets")
        return result

    async def dead_letters(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("registry", "/dead-letters")
        return result

    async def letters(self, service: str, *, limit: int, reason: str | None) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(
            "registry", f"/dead-letters/{service}", limit=limit, reason=reason
        )
        return result

    # ------------------------------------------------------------------ actions
    async def promote(self, name: str, alias: str, version: int, actor: str, reason: str) -> Any:
        return await self.post(
            "registry",
            f"/models/{name}/aliases/{alias}",
            json={"version": version, "actor": actor, "reason": reason},
        )

    async def rollback(self, name: str, alias: str, actor: str, reason: str) -> Any:
        return await self.post(
            "registry",
            f"/models/{name}/aliases/{alias}/rollback",
            json={"actor": actor, "reason": reason},
        )

    async def start_rollout(
        self, name: str, version: int, *, shadow: bool, canary_percent: float | None, actor: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version, "shadow": shadow, "actor": actor}
        if canary_percent is not None:
            body["canary_percent"] = canary_percent
        result: dict[str, Any] = await self.post("registry", f"/models/{name}/rollouts", json=body)
        return result

    async def abort_rollout(self, name: str, actor: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.post(
            "registry", f"/models/{name}/rollouts/abort", json={"actor": actor, "reason": reason}
        )
        return result

    async def replay(self, service: str, event_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.post(
            "registry", f"/dead-letters/{service}/replay", json={"event_id": event_id}
        )
        return result

    async def infer(self, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = await self.post(
            "predictor", f"/v2/models/{model}/infer", json={"inputs": inputs}
        )
        return result

    async def model_metadata(self, model: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.get("predictor", f"/v2/models/{model}")
        except (NotFound, Unavailable) as exc:
            raise ActionFailed(f"the predictor cannot serve {model!r}: {exc}") from None
        return result
