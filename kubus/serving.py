"""The probe and metrics endpoints every kubus process serves.

As in controller-runtime, ``--health-probe-bind-address`` serves ``/healthz`` and ``/readyz``
and ``--metrics-bind-address`` serves ``/metrics`` (Prometheus text); ``0`` disables either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

__all__ = ["BindAddress", "Check", "ProbeServer", "parse_bind_address"]

Check = Callable[[], str | None]  # None when fine, else why not


@dataclass(frozen=True)
class BindAddress:
    host: str
    port: int


def parse_bind_address(text: str, *, flag: str) -> BindAddress | None:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``0`` (disabled)."""
    if text == "0":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} must be HOST:PORT, :PORT or 0, not {text!r}")
    return BindAddress(host.strip("[]") or "0.0.0.0", int(port))


class ProbeServer:
    """Serves probes and/or metrics; checks are named so a failing one says which."""

    def __init__(
        self,
        *,
        health: BindAddress | None,
        metrics: BindAddress | None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._health = health
        self._metrics = metrics
        self._registry = registry
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}
        self._runners: list[web.AppRunner] = []
        self.bound: dict[str, int] = {}

    def add_liveness(self, name: str, check: Check) -> None:
        self._liveness[name] = check

    def add_readiness(self, name: str, check: Check) -> None:
        self._readiness[name] = check

    async def start(self) -> None:
        targets: dict[tuple[str, int], web.Application] = {}
        if self._health is not None:
            app = targets.setdefault((self._health.host, self._health.port), web.Application())
            app.router.add_get("/healthz", self._probe(self._liveness))
            app.router.add_get("/readyz", self._probe(self._readiness))
        if self._metrics is not None:
            app = targets.setdefault((self._metrics.host, self._metrics.port), web.Application())
            app.router.add_get("/metrics", self._serve_metrics)
        for (host, port), app in targets.items():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            self._runners.append(runner)
            for address in runner.addresses:
                self.bound[f"{host}:{port}"] = address[1]

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def _probe(
        self, checks: dict[str, Check]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            failures = {name: reason for name, check in checks.items() if (reason := check())}
            verbose = "verbose" in request.query
            if failures:
                lines = [f"[-]{name} failed: {reason}" for name, reason in failures.items()]
                return web.Response(status=500, text="\n".join(lines) + "\n")
            if verbose:
                lines = [f"[+]{name} ok" for name in checks]
                return web.Response(text="\n".join([*lines, "ok"]) + "\n")
            return web.Response(text="ok")

        return handler

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
