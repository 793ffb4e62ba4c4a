"""Schemathesis against the service's own OpenAPI document (/openapi.json), in process, on the shared app with
the real model: generated requests (valid and invalid) for every operation; no 5xx, and every response
conforms to the document (status code, content type, headers, body schema). Bounded:
``CXR_SCHEMATHESIS_EXAMPLES`` examples per operation (default 25)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from reliability_support import assert_ready
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

EXAMPLES = int(os.environ.get("CXR_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


class Served:
    """Where generated requests go. At import (when schemathesis reads /openapi.json) a bare app without a
    model will do; for the tests the fixture points it at the shared, ready app."""

    app: Any = None


async def without_lifespan(scope: dict, receive: Any, send: Any) -> None:
    """The served app minus its lifespan: the session fixture runs that (model loaded, batcher started), and
    schemathesis would otherwise start and stop it around every operation."""
    if scope["type"] != "lifespan":
        await Served.app(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# STOW-RS bodies (multipart/related) have no built-in generator: arbitrary bytes, and bodies framed like a
# STOW-RS request around arbitrary parts (the header names no boundary, so the service must refuse them cleanly).
STOW_MEDIA_TYPE = 'multipart/related; type="application/dicom"'
schemathesis.openapi.media_type(STOW_MEDIA_TYPE, st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=512).map(
        lambda part: b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--b--\r\n"),
))

Served.app = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan)


@pytest.fixture(autouse=True)
def served(client):
    Served.app = client.app
    yield


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_own_openapi_document(case):
    response = case.call()
    case.validate_response(response, checks=CHECKS)


def test_still_ready_after_the_generated_traffic(client):
    assert_ready(client)
