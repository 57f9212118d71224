"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from glm4voice_api.errors import unavailable
from glm4voice_api.serving.services import Services
from glm4voice_api.store import DEFAULT_TENANT


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise unavailable("The server is starting up.")
    return services


def get_request_id(request: Request) -> str:
    return request.state.request_id


def get_tenant(request: Request) -> str:
    """Set by the auth middleware before any handler runs (`default` where no key is needed)."""
    return getattr(request.state, "tenant", DEFAULT_TENANT)


ServicesDep = Annotated[Services, Depends(get_services)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
TenantDep = Annotated[str, Depends(get_tenant)]
