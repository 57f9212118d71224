"""Health probes and the metrics payload."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from glm4voice_api.engine.base import EngineDeadError
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.services import Services
from glm4voice_api.store import StoreUnavailable


async def probe_engine(services: Services) -> tuple[bool, str]:
    """Liveness: the engine, and the speech decoder's thread(s) (a stopped one fails every spoken reply)."""
    try:
        await services.engine.check_health()
    except EngineDeadError as exc:
        return False, f"engine: {exc}"
    if not services.decoder.alive:
        return False, "speech decoder: its thread has stopped"
    return True, "ok"


async def probe_store(services: Services) -> tuple[bool, str]:
    """Readiness: a store that takes no writes fails every spoken reply (and stored keys, ids, voices): not ready,
    so balancers send the work to a replica whose store works. Liveness does not look at it (a restart cannot help)."""
    try:
        await services.store.check_writable()
    except StoreUnavailable as exc:
        return False, f"store: {exc}"
    return True, "ok"


def metrics_payload(metrics: Metrics) -> tuple[bytes, str]:
    # The global registry holds vLLM's own engine metrics (vllm:*), registered by AsyncLLM in this process.
    return generate_latest(REGISTRY) + generate_latest(metrics.registry), CONTENT_TYPE_LATEST
