"""/openapi.json describes the REST API as served, and schemathesis, generating requests from
it against a live server, finds no 5xx and no response that breaks the document."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable

import httpx
from starlette.routing import Route

from server.app import create_app
from server.config import Settings
from tests import support
from tests.support import ServerProcess

EXAMPLES = 25
ADMIN_TOKEN = "schemathesis-admin-token-0123456789"
# The demo payment provider's own pages (HTML forms standing in for Stripe's hosted page)
# are not part of the shop's API.
NOT_API = "/checkout/demo/"
SCHEMATHESIS = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


def test_every_rest_route_is_in_the_document() -> None:
    from server.openapi import document

    doc = document()
    assert doc["openapi"] == "3.1.0"
    served = {
        (route.path, method.lower())
        for route in create_app(Settings()).routes
        if isinstance(route, Route)
        and route.path not in ("/", "/openapi.json")
        and not route.path.startswith(NOT_API)
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served <= documented, served - documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status[0] in "45" and path not in ("/readyz",):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)


async def test_the_document_is_served(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    paths = response.json()["paths"]
    assert "/api/cart/items/{product_id}" in paths and "/api/cart/checkout" in paths
    mutation = paths["/api/cart/items"]["post"]
    names = {p["name"] for p in mutation["parameters"]}
    assert {"Idempotency-Key", "If-Match", "X-Cart-Id", "Origin"} <= names
    assert set(mutation["responses"]) >= {"200", "400", "403", "404", "409", "412", "413", "422"}
    assert "X-Cart-Id" in mutation["responses"]["200"]["headers"]
    assert "Retry-After" in mutation["responses"]["429"]["headers"]


def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(
    make_server: Callable[..., ServerProcess],
) -> None:
    # Long-polls answer within 0.2 s, or generated `wait`s would stall the run.
    # The admin API on, and schemathesis holding its token: it exercises those routes too.
    server = make_server({"LONG_POLL_MAX": "0.2", "ADMIN_TOKEN": ADMIN_TOKEN}).start()
    options = {
        "--checks": "not_a_server_error,response_schema_conformance",
        "--max-examples": str(EXAMPLES),
        "--seed": "1",
        "--max-redirects": "0",
        "--workers": "1",
        "--request-timeout": "10",
    }
    run = subprocess.run(
        [
            *(sys.executable, "-c", SCHEMATHESIS, "run", f"{server.url}/openapi.json"),
            *(part for option in options.items() for part in option),
            *("--header", f"Authorization: Bearer {ADMIN_TOKEN}"),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None, run.stdout[-2000:]
    assert int(counts[1]) == int(counts[2]) >= 200
    print(f"\nschemathesis: {counts[0]}")
    assert "Traceback" not in server.log()
    # The token went with the requests: the admin routes ran, and made products.
    with sqlite3.connect(server.db) as db:
        (count,) = db.execute("SELECT count(*) FROM products").fetchone()
    assert count > len(support.test_catalog())


# --- what schemathesis found, pinned ---------------------------------------------------


async def test_a_wrong_method_names_the_allowed_ones(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.request("TRACE", "/api/cart/items")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"POST", "DELETE"}
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.put("/api/cart")
    assert response.headers["allow"] == "GET, HEAD"


async def test_a_huge_wait_is_capped_not_refused(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"LONG_POLL_MAX": "0.1"}).start()
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.get("/api/cart/changes", params={"since": 0, "wait": "1e308"})
        assert response.status_code == 200 and response.json()["patches"] == []
        for bad in ("inf", "nan", "-1", "\u0663"):  # the last: an Arabic-Indic three
            refused = await client.get("/api/cart/changes", params={"since": bad})
            assert refused.status_code == 422, bad
