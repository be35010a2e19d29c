"""/metrics as prometheus-client renders it: every family with its HELP and TYPE, label
values escaped, one registry per app, and the names the README and dashboards read."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.metrics import COUNTERS, GAUGES, HISTOGRAMS, Metrics
from tests.support import ServerProcess, rest

AWKWARD = 'say "hi"\\ then\na new line'


def families(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    """Each family by the name its samples carry: (type, help, samples)."""
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = (family.type, family.documentation, family.samples)
    return found


def test_label_values_with_quotes_backslashes_and_newlines_are_escaped() -> None:
    metrics = Metrics()
    metrics.inc("cart_mutations_total", source="ws", result=AWKWARD)
    text = metrics.render()
    (line,) = [x for x in text.splitlines() if x.startswith("cart_mutations_total{")]
    escaped = r"say \"hi\"\\ then\na new line"  # the text format's escapes: \" \\ \n
    assert line == f'cart_mutations_total{{result="{escaped}",source="ws"}} 1.0'
    (sample,) = families(text)["cart_mutations_total"][2]
    assert sample.labels == {"source": "ws", "result": AWKWARD}  # parsed back as it was given


def test_every_declared_metric_has_help_and_a_type() -> None:
    metrics = Metrics()
    for name, (_, labels) in COUNTERS.items():
        metrics.inc(name, 2, **{label: "x" for label in labels})
    for name in GAUGES:
        metrics.gauge(name, lambda: 0.5)
    for name in HISTOGRAMS:
        metrics.observe(name, 0.003)
    found = families(metrics.render())
    assert {name: found[name][0] for name in COUNTERS} == dict.fromkeys(COUNTERS, "counter")
    assert {name: found[name][0] for name in GAUGES} == dict.fromkeys(GAUGES, "gauge")
    assert {name: found[name][0] for name in HISTOGRAMS} == dict.fromkeys(HISTOGRAMS, "histogram")
    for name, (kind, text, _) in found.items():
        assert kind != "unknown" and text, name


async def test_the_live_server_exports_nothing_untyped_or_undocumented(
    server: ServerProcess,
) -> None:
    async with rest(server) as client:
        await client.post("/api/cart/items", json={"product_id": "p-047"})
        response = await client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = families(response.text)
    for name, (kind, text, _) in found.items():
        assert kind != "unknown" and text, name
    assert {"cart_rooms_loaded", "cart_database_bytes", "cart_commit_seconds"} <= set(found)
    # prometheus-client's own: the process and its garbage collector
    assert {"process_resident_memory_bytes", "python_gc_collections_total"} <= set(found)
    (ok,) = [s for s in found["cart_mutations_total"][2] if s.labels["result"] == "ok"]
    assert ok.value >= 1


def test_each_app_counts_in_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.inc("cart_purged_rows_total", 5)
    assert first.value("cart_purged_rows_total") == 5
    assert second.value("cart_purged_rows_total") == 0


def test_labels_named_in_another_order_count_one_series() -> None:
    metrics = Metrics()
    metrics.inc("cart_mutations_total", source="rest", result="ok")
    metrics.inc("cart_mutations_total", result="ok", source="rest")
    (sample,) = families(metrics.render())["cart_mutations_total"][2]
    assert sample.value == 2


def test_an_undeclared_counter_or_wrong_labels_fail_at_the_first_increment() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError, match="cart_nothing_total"):
        metrics.inc("cart_nothing_total")
    with pytest.raises(ValueError, match="source"):
        metrics.inc("cart_mutations_total", result="ok")
    with pytest.raises(KeyError, match="cart_nothing"):
        metrics.gauge("cart_nothing", lambda: 1.0)
