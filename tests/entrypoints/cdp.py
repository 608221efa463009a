"""Headless Chromium driven through the Chrome DevTools Protocol (CDP) over a websocket
(aiohttp's client; no browser-automation package needed). Debian's `chromium`
package is enough: `make install` installs it when it is missing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import requests

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    """$PAGEDLLM_CHROMIUM, else the first Chromium on PATH."""
    override = os.environ.get("PAGEDLLM_CHROMIUM")
    if override:
        return override
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page; `call` sends a CDP command and waits."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="pagedllm-chromium-"))
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.log = self.profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        try:
            self._run(self._connect(self._page_ws_url(self._port())))
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log.read_text(errors='replace')}")
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    @staticmethod
    def _page_ws_url(port: int) -> str:
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        return str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])

    def _run(self, coro: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)  # events (no id) are not needed here

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending[call_id] = future
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return dict(self._run(self._call(method, params)))

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value (JSON-like), evaluated in the page."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        """Open `url` and wait until its document has loaded."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while self.evaluate("location.href + ' ' + document.readyState") != f"{url} complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        async def disconnect() -> None:
            if getattr(self, "_ws", None) is not None:
                await self._ws.close()
            if getattr(self, "_session", None) is not None:
                await self._session.close()

        try:
            self._run(disconnect(), timeout=10)
        except Exception:  # noqa: BLE001 - the browser goes away regardless
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
