"""GET /api/products for a catalog of any size: an ETag and 304, gzip for large answers
only, ?ids= for what a cart page needs, and pages (?limit=&after=) in a stable order."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import httpx

from tests.support import ServerProcess, rest
from tests.test_admin import BEARER, TOKEN


async def get(server: ServerProcess, **params: str) -> httpx.Response:
    async with rest(server) as client:
        return await client.get("/api/products", params=params)


async def test_etag_revalidates_and_changes_with_the_catalog(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ADMIN_TOKEN": TOKEN}).start()
    async with rest(server) as client:
        first = await client.get("/api/products")
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"
        same = await client.get("/api/products", headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
        weak = await client.get("/api/products", headers={"If-None-Match": f'"x", W/{etag}'})
        assert weak.status_code == 304
        async with httpx.AsyncClient(base_url=server.url, headers=BEARER) as admin:
            await admin.patch("/api/admin/products/p-001", json={"price_cents": 1})
        changed = await client.get("/api/products", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert changed.json()["products"][0]["price_cents"] == 1
        page = await client.get("/api/products", params={"limit": "5"})
        again = await client.get(
            "/api/products", params={"limit": "5"}, headers={"If-None-Match": page.headers["etag"]}
        )
        assert again.status_code == 304


async def test_large_answers_are_gzipped_small_ones_are_not(server: ServerProcess) -> None:
    async with rest(server) as client:
        plain = await client.get("/api/products", headers={"Accept-Encoding": "identity"})
        packed = await client.get("/api/products", headers={"Accept-Encoding": "gzip"})
        small = await client.get(
            "/api/products", params={"ids": "p-001"}, headers={"Accept-Encoding": "gzip"}
        )
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "accept-encoding"
    assert packed.json() == plain.json()  # httpx undid the gzip
    raw_size = len(plain.content)
    assert int(packed.headers["content-length"]) < raw_size / 3
    assert gzip.decompress(gzip.compress(plain.content)) == plain.content
    assert "content-encoding" not in small.headers
    print(f"\n[size] 122 products: {raw_size} B, gzipped {packed.headers['content-length']} B")


async def test_ids_give_just_those_products_in_the_order_named(server: ServerProcess) -> None:
    response = await get(server, ids="p-010,p-002,nope,p-010, p-003")
    assert [p["id"] for p in response.json()["products"]] == ["p-010", "p-002", "p-003"]
    assert set(response.json()) == {"products"}
    for params in (
        {"ids": ""},
        {"ids": ",".join(f"p-{n:03d}" for n in range(1, 102))},
        {"ids": "p-001", "limit": "5"},
    ):
        refused = await get(server, **params)
        assert refused.status_code == 422, params
        assert refused.json()["error"]["code"] == "invalid_request"


async def test_pages_walk_the_whole_catalog_in_id_order(server: ServerProcess) -> None:
    whole = [p["id"] for p in (await get(server)).json()["products"]]
    assert whole == sorted(whole) and len(whole) == 122
    seen: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(10):
        params = {"limit": "50", **({"after": after} if after else {})}
        page = (await get(server, **params)).json()
        seen += page["products"]
        after = page["next"]
        if after is None:
            break
    assert [p["id"] for p in seen] == whole
    assert seen == (await get(server)).json()["products"]
    # A cursor need not be a product any more: the page starts after where it would be.
    assert [p["id"] for p in (await get(server, limit="2", after="p-0105")).json()["products"]] == [
        "p-011",
        "p-012",
    ]
    assert (await get(server, after="p-120")).json() == {
        "products": [p for p in seen if p["id"] > "p-120"],
        "next": None,
    }
    for bad in ("0", "1001", "x", "-1"):
        assert (await get(server, limit=bad)).status_code == 422, bad


async def test_the_shelf_keeps_id_order_through_small_and_large_changes() -> None:
    from server.cart import Product
    from server.listing import RESORT_OVER, Shelf, product_doc
    from server.protocol import encode

    def made(n: int, **fields: Any) -> Product:
        return Product(**{"id": f"x-{n:04d}", "sku": f"S{n}", "name": f"N{n}",
                          "price_cents": n, "stock": n, **fields})  # fmt: skip

    shelf = Shelf()
    current = {p.id: p for p in (made(n) for n in range(0, 2 * RESORT_OVER, 2))}
    shelf.update(list(current.values()))  # many at once: sorted
    for change in ([made(5)], [made(4, active=False), made(7, price_cents=1)], [made(3)]):
        shelf.update(change)  # a few at a time: inserted and removed in place
        for p in change:
            current[p.id] = p
        listed = [p for _, p in sorted(current.items()) if p.active]
        assert shelf.ids == [p.id for p in listed]
        whole = await shelf.whole()
        assert whole.body == encode({"products": [product_doc(p) for p in listed]})
    page = shelf.page("x-0004", 2)
    expected = [product_doc(current["x-0005"]), product_doc(current["x-0006"])]
    assert page.body == encode({"products": expected, "next": "x-0006"})
