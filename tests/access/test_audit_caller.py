"""The caller's name (key name or token subject) reaches request.state and the audit record's ``caller``
column; no key or token appears in a log line, the metrics or the audit store."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from access_helpers import IdentityProvider
from app_harness import Running
from sqlalchemy import select

from app.audit.models import AuditRecord


def _records(server: Running, request_ids: list[str]) -> dict[str, dict]:
    audit = server.app.state.audit
    assert audit.writer.flush(30)
    with audit.engine.connect() as connection:
        rows = connection.execute(select(AuditRecord).where(AuditRecord.request_id.in_(request_ids))).mappings()
        return {row["request_id"]: dict(row) for row in rows}


def test_caller_in_audit_and_no_secret_anywhere(server: Running, key_file: tuple[Path, dict[str, str]],
                                                idp: IdentityProvider, png: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, keys = key_file
    token = idp.token(sub="ris-prod", scope="cxr:predict")
    expired = idp.token(sub="ris-prod", scope="cxr:predict", exp=1_000_000, iat=999_000, nbf=999_000)
    cases = {  # credential headers -> (status, client label, caller column)
        "key": ({"X-API-Key": keys["predictor"]}, 200, "predictor", "predictor"),
        "token": ({"Authorization": f"Bearer {token}"}, 200, "ris-prod", "ris-prod"),
        "no scope": ({"Authorization": f"Bearer {keys['reader']}"}, 403, "reader", "reader"),
        "none": ({}, 401, "no-key", None),
        "wrong": ({"X-API-Key": keys["predictor"][:-2] + "zz"}, 401, "invalid-key", None),
        "expired": ({"Authorization": f"Bearer {expired}"}, 401, "invalid-key", None),
    }
    ids = {}
    for case, (headers, status, _, _) in cases.items():
        ids[case] = f"caller-{uuid.uuid4().hex}"
        response = server.client.post("/predict", files={"file": ("x.png", png)},
                                      headers={**headers, "X-Request-ID": ids[case]})
        assert response.status_code == status, (case, response.text)
    records = _records(server, list(ids.values()))
    for case, (_, status, client, caller) in cases.items():
        record = records[ids[case]]
        assert (record["status"], record["client"], record["caller"]) == (status, client, caller), case
    secrets = [*keys.values(), token, expired]
    metrics = server.client.get("/metrics").text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    stored = repr(list(records.values()))
    for secret in secrets:
        for text in (metrics, logged, stored):
            assert secret not in text and secret[-20:] not in text
