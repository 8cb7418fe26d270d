"""Is the apiserver there, and does it take our credentials? Asked once at start-up.

A service that starts against a dead apiserver should say so in one line after a bounded time,
before it provisions anything on the bus; an apiserver still starting may refuse connections
for a moment, so refusals are retried until the deadline. Credentials the apiserver rejects
(401, 403) and TLS that does not verify are not retried: they will not get better.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from kubus.kube.client import KubeClient
from kubus.kube.config import KubeConfig
from kubus.kube.errors import KubeApiError

__all__ = ["ApiserverUnreachable", "wait_for_apiserver"]

log = logging.getLogger(__name__)

_RETRY: Final = 0.5


class ApiserverUnreachable(Exception):
    """No usable answer from the apiserver in time; the message says what there was."""


async def wait_for_apiserver(config: KubeConfig, *, within: float) -> None:
    """Returns once the apiserver lists the core API for us, ``within`` seconds at most."""
    server = _shown(config.server)
    deadline = time.monotonic() + within
    last = "no answer"
    async with KubeClient(config, timeout=min(within, 10.0)) as kube:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await kube.discover("", "v1", "namespaces")
                return
            except TimeoutError:
                break
            except KubeApiError as error:
                if error.status in (401, 403):
                    raise ApiserverUnreachable(
                        f"the apiserver at {server} refused the kubeconfig's credentials: {error}"
                    ) from None
                last = str(error)
            except aiohttp.ClientConnectorCertificateError as error:
                raise ApiserverUnreachable(
                    f"the apiserver at {server}: TLS: {error.certificate_error}"
                ) from None
            except (aiohttp.ClientError, OSError) as error:
                last = " ".join(str(error).split()) or type(error).__name__
            log.debug("apiserver at %s: %s", server, last)
            await asyncio.sleep(min(_RETRY, max(0.0, deadline - time.monotonic())))
    raise ApiserverUnreachable(
        f"no answer from the apiserver at {server} within {within:g}s: {last}"
    )


def _shown(url: str) -> str:
    """The server URL without any user:password it may hold."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{host}{port}").geturl()
