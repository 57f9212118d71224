"""Schemathesis fuzzing of every route of the real server, from the server's own /openapi.json.

Each operation gets schema-valid and schema-violating requests (bodies, multipart uploads, path parameters); every
answer must be no 5xx and match the published schema, which promises the OpenAI error envelope for every 4xx/5xx.
Generation is bounded (the model calls run on the CPU), derandomized so CI sees the same cases every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.fuzz.checks import assert_envelope, assert_server_unaffected

if TYPE_CHECKING:
    from schemathesis import Case

    from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
MAX_REPLY_TOKENS = 4
MAX_SPEECH_CHARS = 24
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def fuzz_schema(server: RunningServer) -> schemathesis.BaseSchema:
    raw = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    # Fuzzed model names are all unknown (404 before anything else runs): make the schema-valid cases name the
    # served model, so they reach validation, the audio decoders and the engine. Negative cases still vary it.
    for schema in raw["components"]["schemas"].values():
        if "model" in schema.get("properties", {}):
            schema["properties"]["model"] = {"type": "string", "enum": [MODEL]}
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.config.update(base_url=server.base_url, request_timeout=120)
    return loaded


def _bound_generation(case: Case) -> None:
    """Keep model calls short: clamp reply budgets and speech input (random weights never stop by themselves)."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/v1/chat/completions":
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and body[key] > MAX_REPLY_TOKENS:
                body[key] = MAX_REPLY_TOKENS
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_REPLY_TOKENS
    elif case.path == "/v1/audio/speech" and isinstance(body.get("input"), str) and len(body["input"]) <= 4096:
        # Only schema-valid input is shortened: over-long input must stay over-long, to be rejected.
        body["input"] = body["input"][:MAX_SPEECH_CHARS]


def _check(case: Case) -> None:
    _bound_generation(case)
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert_envelope(response.status_code, response.headers.get("content-type", [""])[0], response.content)
    # A schema-valid body can still be wrong in ways no JSON schema says (the last message must be the user's, the
    # audio must decode): such a 400 is right, so only the check that insists on a 2xx for valid data is left out.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_survives_fuzzing(fuzz_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    """Every operation, schema-valid (`positive`) and schema-violating (`negative`) requests."""
    failures: dict[str, str] = {}
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/voices"}
    for operation in operations:
        run = settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            # No shrinking: each step is a live request (a model call); the first failing case is reported as is.
            phases=[Phase.explicit, Phase.generate],
        )(given(case=operation.as_strategy(generation_mode=mode))(_check))
        try:
            run()
        except Unsatisfiable:
            # Nothing to violate: no body or query, and path parameters that any string satisfies.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert not failures, "\n\n".join(f"{label}\n{failure}" for label, failure in failures.items())


def test_server_unaffected_by_fuzzing(server: RunningServer) -> None:
    """Runs after the fuzzing in the same group: healthy, nothing leaked, a normal chat still works."""
    assert_server_unaffected(server)
