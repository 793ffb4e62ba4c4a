"""What access control costs per request, in one run.

In process (always, a few seconds): the CPU microseconds ``check_scope`` spends per request for each kind of
caller (open, a key from the key file, a flat CXR_API_KEYS key, an RS256 sign-on token), and a trivial FastAPI
route with the predict scope against the same route without it, through the ASGI stack, in ABBA order: the
ratio is the per-request overhead on the cheapest possible request (a /predict costs milliseconds).

``--http``: /predict over real HTTP at 64 connections (wrk), a server with a scoped key from a key file against
one without access control, taking turns in ABBA rounds (benchmarks/ab.py); target: within 3 %. Needs ``wrk``
and the shared data (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N = 20_000


def _request(app: object, headers: dict[str, str]) -> object:
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/predict", "headers": raw, "app": app,
                    "client": ("127.0.0.1", 5000), "state": {}})


def check_costs(workdir: Path) -> dict[str, float]:
    """CPU us per ``check_scope`` call, by kind of credential."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from fastapi import FastAPI

    from app.access.control import AccessControl
    from app.access.keyfile import add_key
    from app.access.oidc import OidcVerifier
    from app.security import check_scope
    from app.settings import Settings

    key_file = workdir / "keys.jsonl"
    for i in range(20):  # a realistic file: a score of partners
        add_key(key_file, f"partner-{i}", frozenset({"monitor"}))
    key = add_key(key_file, "ris", frozenset({"predict"}))
    flat = "flat-key-0123456789abcdef0123"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = workdir / "jwks.json"
    jwks.write_text('{"keys": [' + jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())[:-1]
                    + ', "kid": "k1"}]}')
    token = jwt.encode({"iss": "https://idp", "aud": "cxr", "sub": "ris", "exp": int(time.time()) + 3600,
                        "scope": "cxr:predict"}, private, algorithm="RS256", headers={"kid": "k1"})
    cases = {
        "open (loopback, nothing configured)": (Settings(), {}),
        "key from the key file (21 keys)": (Settings(api_keys_file=key_file), {"X-API-Key": key}),
        "flat CXR_API_KEYS key": (Settings(api_keys=[flat]), {"X-API-Key": flat}),
        "RS256 sign-on token seen before (verified once, then cached until exp)": (
            Settings(oidc_jwks=str(jwks), oidc_issuer="https://idp", oidc_audience="cxr"),
            {"Authorization": f"Bearer {token}"}),
    }
    costs = {}
    for name, (settings, headers) in cases.items():
        app = FastAPI()
        app.state.settings = settings
        app.state.access = AccessControl(settings)

        async def loop(app: FastAPI = app, headers: dict[str, str] = headers) -> None:
            for _ in range(N):
                await check_scope(_request(app, headers), "predict")

        started = time.process_time()
        asyncio.run(loop())
        costs[name] = (time.process_time() - started) / N * 1e6
    verifier = OidcVerifier(str(jwks), issuer="https://idp", audience="cxr")
    started = time.process_time()
    for _ in range(N // 10):
        verifier.verify(token)
    costs["RS256 sign-on token (verification alone)"] = (time.process_time() - started) / (N // 10) * 1e6
    return costs


def asgi_costs(workdir: Path, rounds: int = 3, n: int = 3000) -> dict[str, float]:
    """CPU us per request through FastAPI (no middleware) for an empty route: without any dependency, with the
    predict scope but access control off, and with a key from the key file."""
    import httpx
    from fastapi import Depends, FastAPI

    from app.access.control import AccessControl
    from app.access.keyfile import add_key
    from app.security import require_predict
    from app.settings import Settings

    key_file = workdir / "asgi-keys.jsonl"
    key = add_key(key_file, "ris", frozenset({"predict"}))

    def build(settings: Settings, protected: bool) -> FastAPI:
        app = FastAPI()
        app.state.settings = settings
        app.state.access = AccessControl(settings)

        @app.post("/predict", dependencies=[Depends(require_predict)] if protected else [])
        async def predict() -> dict[str, str]:
            return {"label": "NORMAL"}

        return app

    # open: no dependency at all; "open+scope": the dependency with access control off (loopback, nothing
    # configured); key: the dependency with a key from the key file
    apps = {"open": build(Settings(), False), "open+scope": build(Settings(), True),
            "key": build(Settings(api_keys_file=key_file), True)}

    async def run(app: FastAPI) -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(200):
                await client.post("/predict", headers={"X-API-Key": key})
            started = time.process_time()
            for _ in range(n):
                response = await client.post("/predict", headers={"X-API-Key": key})
                assert response.status_code == 200, response.text
            return (time.process_time() - started) / n * 1e6

    results: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name in [*apps, *reversed(apps)]:  # ABCCBA
            results[name].append(asyncio.run(run(apps[name])))
    return {name: statistics.median(values) for name, values in results.items()}


def http_ab(args: argparse.Namespace) -> None:
    from app.access.keyfile import add_key
    from benchmarks.ab import compare, prepare

    workdir, upload = prepare(args, "cxr-auth-bench-")
    key_file = workdir / "keys.jsonl"
    os.environ["BENCH_API_KEY"] = add_key(key_file, "bench", frozenset({"predict"}))
    rates, cpu_ms = compare({"scoped key": {"CXR_API_KEYS_FILE": str(key_file)}, "no auth": {}}, upload, args,
                            workdir, note="X-API-Key on every request")
    with_key, without = rates["scoped key"], rates["no auth"]
    print(f"median /predict: scoped key {with_key:.1f} req/s, no auth {without:.1f} req/s, ratio "
          f"{with_key / without:.3f} (target >= 0.97)")
    print(f"median server CPU per answer: scoped key {cpu_ms['scoped key']:.2f} ms, no auth "
          f"{cpu_ms['no auth']:.2f} ms")


def main() -> int:
    from benchmarks.ab import load_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="also the /predict A/B over real HTTP (wrk)")
    load_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-auth-micro-") as folder:
        workdir = Path(folder)
        for name, cost in check_costs(workdir).items():
            print(f"check_scope CPU per request, {name}: {cost:.1f} us")
        costs = asgi_costs(workdir)
    print(f"trivial route through FastAPI, in process, ABCCBA medians per request: no dependency "
          f"{costs['open']:.1f} us; predict scope with access control off {costs['open+scope']:.1f} us; predict "
          f"scope with a key-file key {costs['key']:.1f} us. Key checking adds {costs['key'] - costs['open+scope']:.1f}"
          f" us (ratio {costs['key'] / costs['open+scope']:.3f} on this empty route; a /predict answer costs "
          "milliseconds)")
    if args.http:
        http_ab(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
