"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from glm4voice_api.errors import unavailable
from glm4voice_api.serving.services import Services


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise unavailable("The server is starting up.")
    return services


def get_request_id(request: Request) -> str:
    return request.state.request_id


ServicesDep = Annotated[Services, Depends(get_services)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
