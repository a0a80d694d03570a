"""The predictor's state and how it changes: find production versions in the registry,
fetch their artifacts from the store (sha256 checked), load them off the event loop and
swap them in. No web framework, no broker: the app wires events and HTTP to these methods.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from contracts.events import ArtifactRef, ModelRollout, validate_name
from libs import telemetry
from libs.messaging.retry import waiting
from libs.storage import open_store
from services.predictor import metrics
from services.predictor.batching import MicroBatcher
from services.predictor.holder import ModelTable
from services.predictor.model import LoadedModel, load_model, resolve_device
from services.predictor.prediction_log import input_summaries
from services.predictor.routing import ActiveRollout
from services.predictor.settings import PredictorSettings

log = logging.getLogger("lmesh.predictor")


class RegistryUnavailable(RuntimeError):
    pass


class PredictorRuntime:
    def __init__(self, settings: PredictorSettings, store_url: str | None = None) -> None:
        self.settings = settings
        self.store = open_store(store_url)
        self.names = settings.model_names()
        for n in self.names:
            validate_name(n)
        self.table = ModelTable(keep_previous=settings.keep_previous, on_install=self._installed)
        self._device = resolve_device(settings.device)
        self._mode: Any = settings.batch_execution
        if self._mode == "auto":
            self._mode = "thread" if self._device.type == "cuda" else "inline"
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the app clears it until its broadcast consumer is positioned (readiness)
        self.events_ready = True
        self._loads: dict[tuple[str, int], asyncio.Future[LoadedModel]] = {}
        #: running rollouts by model name (model.rollout.v1): the candidate, loaded
        self.rollouts: dict[str, ActiveRollout[LoadedModel]] = {}

    # ------------------------------------------------------------------ loading

    def wants(self, name: str) -> bool:
        return not self.names or name in self.names

    def _build(
        self,
        name: str,
        version: int,
        weights: ArtifactRef,
        card: ArtifactRef,
        keep_weights: bool = False,
    ) -> LoadedModel:
        """Blocking: fetch (sha256-checked by the store) and rebuild; runs in a thread.
        ``keep_weights``: a rollout's candidate (a shadow child process loads them too)."""
        weights_bytes = self.store.get(weights, verify=True)
        card_bytes = self.store.get(card, verify=True)
        model = load_model(
            name,
            version,
            weights_bytes,
            card_bytes,
            variant=self.settings.variant,
            device=str(self._device),
            noop=self.settings.noop_forward,
        )
        if keep_weights:
            model.weights = weights_bytes
        model.batcher = MicroBatcher(
            model.forward,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000,
            mode=self._mode,
            on_batch=metrics.BATCH_SIZE.labels(name).observe,
            summarize=input_summaries,  # for the requests that are logged
        )
        return model

    async def load(self, name: str, version: int, weights: ArtifactRef, card: ArtifactRef) -> bool:
        """Load a version in the background and swap it in; True if it now serves."""
        ticket = self.table.ticket()
        current = self.table.get(name)
        if current is not None and current.version == version:
            return False
        key = (name, version)
        with telemetry.tracer("lmesh.predictor").start_as_current_span(
            "predictor load model",
            attributes={
                "lmesh.model_name": name,
                "lmesh.version": version,
                "lmesh.variant": self.settings.variant,
            },
        ) as span:
            pending = self._loads.get(key)
            if pending is None:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(self._build, name, version, weights, card)
                )
                self._loads[key] = pending
                pending.add_done_callback(lambda _f: self._loads.pop(key, None))
            model = await pending
            if model.load_span is None:
                model.load_span = span.get_span_context()
            installed = self.table.install(model, ticket)
            span.set_attribute("lmesh.installed", installed)
            return installed

    async def apply_rollout(self, event: ModelRollout) -> str:
        """Follow a rollout step: load the candidate beside the champion (shadow, canary),
        install it (promoted) or drop it (aborted). A load that fails raises."""
        name = event.model_name
        active = self.rollouts.get(name)
        if event.step in ("promoted", "aborted"):
            if active is None or active.rollout_id != event.rollout_id:
                return f"{event.step} (not routing it)"
            del self.rollouts[name]
            if event.step == "promoted":  # no gap: model.promoted.v1 finds it serving
                self.table.install(active.candidate, self.table.ticket())
            return event.step
        if active is not None and active.candidate_version == event.candidate_version:
            candidate = active.candidate
        else:
            candidate = await asyncio.to_thread(
                self._build, name, event.candidate_version, event.weights, event.card, True
            )
        self.rollouts[name] = ActiveRollout(
            rollout_id=event.rollout_id,
            step=event.step,  # type: ignore[arg-type]
            candidate=candidate,
            candidate_version=event.candidate_version,
            champion_version=event.champion_version,
            canary_percent=event.canary_percent or 0.0,
        )
        return f"{event.step} with candidate version {event.candidate_version}"

    def _installed(self, model: LoadedModel, old: LoadedModel | None) -> None:
        metrics.MODEL_VERSION.labels(model.name).set(model.version)
        metrics.SWAPS.labels(model.name).inc()
        log.info(
            "serving %s version %s (%s, %s)%s",
            model.name,
            model.version,
            model.variant,
            model.device,
            f", was {old.version}" if old else "",
        )

    # ------------------------------------------------------------------ registry

    async def production_versions(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """ModelVersionPublic of each wanted model's production version."""
        base = self.settings.registry_url.rstrip("/")
        try:
            resp = await client.get(f"{base}/models")
            resp.raise_for_status()
            names = [
                m["model_name"]
                for m in resp.json()
                if self.wants(m["model_name"]) and (m.get("aliases") or {}).get("production")
            ]
            found = []
            for name in names:
                r = await client.get(f"{base}/models/{name}/aliases/production")
                if r.status_code == 404:
                    continue
                r.raise_for_status()
                found.append(r.json())
            return found
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(f"registry at {base}: {exc!r}") from exc

    async def sync_from_registry(self, client: httpx.AsyncClient) -> int:
        """Load every production version not served yet, and follow each model's running
        rollout (a predictor started mid-rollout routes like the others); the number of
        models swapped."""
        swapped = 0
        for mv in await self.production_versions(client):
            ok = await self.load(
                mv["model_name"],
                int(mv["version"]),
                ArtifactRef.model_validate(mv["weights"]),
                ArtifactRef.model_validate(mv["card"]),
            )
            swapped += ok
            try:
                await self.sync_rollout(client, mv["model_name"])
            except Exception as exc:  # the champion serves; the next event or sync fixes it
                log.warning("rollout of %s not followed yet: %s", mv["model_name"], exc)
        return swapped

    async def sync_rollout(self, client: httpx.AsyncClient, name: str) -> None:
        """Apply the registry's current rollout step of ``name`` when it is not applied."""
        base = self.settings.registry_url.rstrip("/")
        r = await client.get(f"{base}/models/{name}/rollouts/current")
        if r.status_code == 404:
            return
        r.raise_for_status()
        current = r.json()
        active = self.rollouts.get(name)
        if active is not None and (active.rollout_id, active.step) == (
            current["id"],
            current["step"],
        ):
            return
        if not current["running"] and (active is None or active.rollout_id != current["id"]):
            return
        v = await client.get(f"{base}/models/{name}/versions/{current['candidate_version']}")
        v.raise_for_status()
        last = current["steps"][-1] if current["steps"] else {}
        await self.apply_rollout(
            ModelRollout(
                model_name=name,
                rollout_id=current["id"],
                candidate_version=current["candidate_version"],
                champion_version=current["champion_version"],
                alias=current["alias"],
                step=current["step"],
                canary_percent=current["canary_percent"] if current["step"] == "canary" else None,
                reason=last.get("reason", "synced from the registry"),
                actor=last.get("actor", "registry"),
                weights=ArtifactRef.model_validate(v.json()["weights"]),
                card=ArtifactRef.model_validate(v.json()["card"]),
            )
        )

    async def follow_registry(self) -> None:
        """At start: retry the registry with capped exponential backoff until a model serves
        (or every wanted model does); then re-read it every ``reconcile_interval_s``."""
        async with httpx.AsyncClient(timeout=10.0) as client:

            async def serving() -> bool:
                await self.sync_from_registry(client)
                return self.table.ready() and all(self.table.get(n) for n in self.names)

            wait = waiting(
                max_backoff_s=self.settings.registry_retry_max_s, what="production models"
            )
            await wait(serving)
            while self.settings.reconcile_interval_s > 0:
                await asyncio.sleep(self.settings.reconcile_interval_s)
                try:
                    await self.sync_from_registry(client)
                except Exception as exc:
                    log.warning("registry reconcile failed: %s", exc)

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self.follow_registry())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
