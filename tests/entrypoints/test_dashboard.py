"""The live dashboard: the core's snapshot (exact block states and owners), the routes
in process over the shared SmolLM2 core (schema, API key, --disable-dashboard), and
the page in headless Chromium against a real server (tests/entrypoints/cdp.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cdp import Chromium, find_chromium
from fastapi.testclient import TestClient
from remote_server import MODEL_NAME, RemoteServer, metric_samples

from pagedllm.config import EngineArgs
from pagedllm.core.dashboard import block_map
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.engine.core_client import ThreadedClient
from pagedllm.entrypoints.http_options import HTTPOptions
from pagedllm.entrypoints.openai.api_server import build_app
from pagedllm.sampling_params import SamplingParams

KEY = "dash-key"
VERSION = "Number(document.getElementById('last-update').dataset.version)"
SNAPSHOT_FIELDS = {
    "version",
    "time",
    "engine",
    "config",
    "kv",
    "queue",
    "counters",
    "latency",
    "history",
    "sample_interval_s",
    "core_build_s",
}
KV_FIELDS = {
    "num_blocks",
    "block_size",
    "num_free_blocks",
    "usage",
    "blocks_per_cell",
    "states",
    "owner_ids",
    "owner_runs",
}


def _hold(kv: KVCacheManager, request_id: str, num_blocks: int) -> list[int]:
    blocks = kv.block_pool.get_new_blocks(num_blocks)
    kv.req_to_blocks[request_id] = blocks
    kv.req_to_block_ids[request_id] = [b.block_id for b in blocks]
    return kv.req_to_block_ids[request_id]


def test_block_map_states_and_owners() -> None:
    kv = KVCacheManager(12, 16, enable_caching=True)
    a = _hold(kv, "a", 3)  # blocks 0, 1, 2
    b = _hold(kv, "b", 2)  # blocks 3, 4
    kv.block_pool.cache_full_block(kv.req_to_blocks["a"][0], 111)
    freed = _hold(kv, "gone", 2)  # blocks 5, 6: cached, then freed
    kv.block_pool.cache_full_block(kv.req_to_blocks["gone"][0], 222)
    kv.block_pool.free_blocks(kv.req_to_blocks.pop("gone"))
    kv.req_to_block_ids.pop("gone")
    assert (a, b, freed) == ([0, 1, 2], [3, 4], [5, 6])
    m = block_map(kv, max_cells=100)
    assert m["states"] == "puuuuc......"
    assert m["blocks_per_cell"] == 1 and m["num_free_blocks"] == 7
    assert m["owner_ids"] == ["a", "b"]
    assert m["owner_runs"] == [0, 3, 0, 3, 2, 1]  # cells 0-2: a, cells 3-4: b


def test_block_map_folds_large_pools() -> None:
    kv = KVCacheManager(100, 16, enable_caching=False)
    _hold(kv, "a", 25)  # blocks 0..24: cells 0, 1 full, cell 2 half
    m = block_map(kv, max_cells=10)
    assert m["blocks_per_cell"] == 10 and len(m["states"]) == 10
    # Cell 2 holds 5 used and 5 free blocks: the tie goes to "free", its owner is still shown.
    assert m["states"] == "uu" + "." * 8
    assert m["owner_runs"] == [0, 3, 0]


@pytest.fixture()
def core(smol_llm: Any) -> Iterator[Any]:
    core = smol_llm.llm_engine.engine_core
    yield core
    core.abort_requests([r.request_id for r in (*core.scheduler.running, *core.scheduler.waiting)])
    assert not core.has_unfinished_requests()


def test_core_snapshot_follows_a_request(smol_llm: Any, core: Any) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 8
    params = SamplingParams(max_tokens=8, temperature=0.0)
    built = smol_llm.llm_engine.builder.build("dash-1", prompt, params, time.time())
    for child in built.children:
        core.add_request(child)
    core.step()
    snap = core.dashboard_snapshot()
    running = snap["queue"]["running"]
    assert [r["id"] for r in running] == ["dash-1"] and running[0]["status"] == "running"
    blocks = core.kv_cache_manager.get_block_ids("dash-1")
    assert running[0]["num_blocks"] == len(blocks) > 2
    states = snap["kv"]["states"]
    assert {states[i] for i in blocks} <= {"u", "p"} and "p" in {states[i] for i in blocks}
    assert sum(states.count(s) for s in "up") == len(blocks)
    assert snap["kv"]["owner_ids"] == ["dash-1"]
    core.abort_requests(["dash-1"])
    after = core.dashboard_snapshot()["kv"]["states"]
    assert "u" not in after and "p" not in after and "c" in after  # the prompt stays cached
    # The request's cached blocks join those cached before it (the core is shared).
    assert after.count("c") == states.count("p") + states.count("c")


def _app(smol_llm: Any, **options: Any) -> TestClient:
    engine = smol_llm.llm_engine
    async_engine = AsyncLLM(
        engine.engine_config, engine.tokenizer, ThreadedClient(engine.engine_core), log_stats=False
    )
    return TestClient(
        build_app(EngineArgs(), engine=async_engine, http_options=HTTPOptions(**options))
    )


def test_snapshot_endpoint_fields(smol_llm: Any, core: Any) -> None:
    with _app(smol_llm) as client:
        body = {"prompt": "Hello there", "max_tokens": 4, "temperature": 0.0}
        assert client.post("/v1/completions", json=body).status_code == 200
        snap = client.get("/dashboard/snapshot").json()
    assert set(snap) == SNAPSHOT_FIELDS and set(snap["kv"]) == KV_FIELDS
    assert snap["engine"] == {"healthy": True, "error": None}
    assert snap["kv"]["num_blocks"] == core.num_gpu_blocks == len(snap["kv"]["states"])
    assert snap["config"]["block_size"] == 16 and snap["config"]["max_model_len"] == 2048
    assert snap["counters"]["generation_tokens"] >= 4
    assert snap["latency"]["num_requests"] >= 1 and snap["latency"]["ttft"]["p50"] > 0
    assert snap["queue"]["num_running"] == 0 and snap["history"]


def test_dashboard_needs_the_api_key(smol_llm: Any, core: Any) -> None:
    with _app(smol_llm, api_key=KEY) as client:
        for path in ("/dashboard", "/dashboard/snapshot", "/dashboard/events"):
            assert client.get(path).status_code == 401
            assert client.get(path, params={"api_key": "wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/dashboard/snapshot", headers=auth).status_code == 200
        assert client.get("/dashboard/snapshot", params={"api_key": KEY}).status_code == 200
        page = client.get("/dashboard", params={"api_key": KEY})
        assert page.status_code == 200 and 'id="block-map"' in page.text
        assert "httponly" in page.headers["set-cookie"].lower()
        assert client.get("/dashboard/snapshot").status_code == 200  # the page's cookie


def test_disable_dashboard_is_404(smol_llm: Any, core: Any) -> None:
    with _app(smol_llm, enable_dashboard=False) as client:
        for path in ("/dashboard", "/dashboard/snapshot", "/dashboard/events"):
            assert client.get(path).status_code == 404
        assert client.get("/health").status_code == 200


# ---- a real server ---------------------------------------------------------------------


def test_events_stream(server: RemoteServer) -> None:
    """The first event carries the whole history, the next ones only new points."""
    with requests.get(server.url("/dashboard/events"), stream=True, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
            if len(events) == 3:
                break
    assert set(events[0]) == SNAPSHOT_FIELDS and events[0]["history"]
    assert events[0]["version"] < events[1]["version"] < events[2]["version"]
    seen = [p["t"] for e in events for p in e["history"]]
    assert len(seen) == len(set(seen))  # no point is sent twice


NUM_STREAMS = 3
MAP_IMAGE = "document.getElementById('block-map').toDataURL()"
HOVER_POINT = """(() => {
  const i = [...snap.kv.states].findIndex((s) => s === "u" || s === "p");
  const r = document.getElementById("block-map").getBoundingClientRect();
  const g = mapGeometry;
  return [r.left + (i % g.cols + 0.5) * g.side, r.top + (Math.floor(i / g.cols) + 0.5) * g.side];
})()"""


def _text(browser: Chromium, element_id: str) -> str:
    return str(browser.evaluate(f"document.getElementById('{element_id}').textContent"))


def _page_kv_usage(browser: Chromium) -> float:
    value = browser.evaluate("document.getElementById('kv-usage').dataset.value")
    return float(value) if value else -1.0


def _metric(server: RemoteServer, name: str) -> float:
    return metric_samples(server)[(f"pagedllm:{name}", ())]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _open_stream(server: RemoteServer, i: int) -> requests.Response:
    body = {
        "model": MODEL_NAME,
        "prompt": f"Story number {i}: once upon a time, " * 6,
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    return requests.post(server.url("/v1/completions"), json=body, stream=True, timeout=120)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium on PATH and `make install` could not install Debian's chromium "
            "package (apt-get install -y chromium); set PAGEDLLM_CHROMIUM to a Chromium binary"
        )
    chromium = Chromium(executable)
    yield chromium
    chromium.close()


def test_page_in_chromium(
    server: RemoteServer, browser: Chromium, tmp_path_factory: pytest.TempPathFactory
) -> None:
    browser.navigate(server.url("/dashboard"))
    wait_for(lambda: int(browser.evaluate(VERSION) or 0) > 0, "the page's first update")
    assert _text(browser, "config-block_size") == "16"
    assert _text(browser, "config-max_model_len") == "2048"
    wait_for(lambda: _text(browser, "running-count") == "0", "an idle page")
    idle_map = browser.evaluate(MAP_IMAGE)
    streams = [_open_stream(server, i) for i in range(NUM_STREAMS)]
    try:
        # The first chunk of each: the request is in the engine. The line iterators are
        # kept: dropping one closes its connection, and the server aborts the request.
        lines = [stream.iter_lines() for stream in streams]
        for line in lines:
            next(line)
        wait_for(
            lambda: (
                _text(browser, "running-count") == str(NUM_STREAMS)
                and _metric(server, "num_requests_running") == NUM_STREAMS
            ),
            "the page and /metrics to show the running requests",
        )
        wait_for(
            lambda: (
                abs(_page_kv_usage(browser) - _metric(server, "kv_cache_usage_perc")) <= 0.02
                and _page_kv_usage(browser) > 0
            ),
            "the page's KV usage to match /metrics",
        )
        used = int(browser.evaluate("document.getElementById('block-map').dataset.usedCells"))
        assert used >= NUM_STREAMS and browser.evaluate(MAP_IMAGE) != idle_map
        x, y = browser.evaluate(HOVER_POINT)
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        tooltip = _text(browser, "tooltip")
        shown = browser.evaluate(
            "[...document.querySelectorAll('#queue tbody tr')].map(r => r.dataset.id)"
        )
        assert "owner: " in tooltip and tooltip.split("owner: ")[1].split("\n")[0] in shown
        time.sleep(2.0)  # some history on the charts
        out = Path(
            os.environ.get("PAGEDLLM_TEST_ARTIFACTS") or tmp_path_factory.mktemp("dashboard")
        )
        out.mkdir(parents=True, exist_ok=True)
        print(f"dashboard screenshot: {browser.screenshot(out / 'dashboard.png')}")
    finally:
        for stream in streams:
            stream.close()  # the server aborts the requests
    wait_for(
        lambda: (
            _text(browser, "running-count") == "0" and _metric(server, "num_requests_running") == 0
        ),
        "the aborted requests to leave the page",
    )
    used_cells = "Number(document.getElementById('block-map').dataset.usedCells)"
    wait_for(lambda: browser.evaluate(used_cells) == 0, "the map to show the blocks freed")
