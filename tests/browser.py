"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the page's tests.

One browser per test, started with its own profile in the test's temporary directory and no
network of its own beyond loopback (the background-networking flags keep Chromium from dialling
Google's hosts). A `Tab` records what the page logs and every request it makes, so a test can
check that nothing failed and nothing left for another host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import missing_prerequisite

_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",
)
_KEYS = {
    "Tab": ("Tab", 9, ""),
    "Enter": ("Enter", 13, "\r"),
    "Escape": ("Escape", 27, ""),
    "ArrowDown": ("ArrowDown", 40, ""),
    "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowLeft": ("ArrowLeft", 37, ""),
    "ArrowRight": ("ArrowRight", 39, ""),
}


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        missing_prerequisite("Chromium is not installed (apt-get install chromium)")
    return found


class Tab:
    """One page target, attached over the browser's connection (a flat session)."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        self.events.append((method, params))
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(
                details.get("exception", {}).get("description") or details["text"]
            )
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value")) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    async def goto(self, url: str) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, 15)

    async def reload(self) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        await self.send("Page.reload")
        await asyncio.wait_for(loaded, 15)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Waits until `expression` is truthy in the page (the page did something), and
        returns its value; `timeout` only bounds a failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            await asyncio.sleep(0.02)

    async def press(self, key: str, *, shift: bool = False) -> None:
        code, vk, text = _KEYS[key]
        down: dict[str, Any] = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        if shift:
            down["modifiers"] = 8
        if text:
            down["text"] = text
        await self.send("Input.dispatchKeyEvent", type="keyDown", **down)
        down.pop("text", None)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **down)

    async def type(self, text: str) -> None:
        await self.send("Input.insertText", text=text)

    async def focused(self) -> str:
        return str(
            await self.evaluate("document.activeElement.id || document.activeElement.tagName")
        )

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse):
        self.process, self.ws = process, ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self.tabs: dict[str, Tab] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(AssertionError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data["result"])
                continue
            method, params, session = data["method"], data.get("params", {}), data.get("sessionId")
            if session in self.tabs:
                self.tabs[session].on_event(method, params)
            for waiter in list(self.waiters):
                if waiter[0] == method and waiter[1] in (None, session) and not waiter[2].done():
                    waiter[2].set_result(params)
                    self.waiters.remove(waiter)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    def expect(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future of the next `method` event (of `session`), set up before the action."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((method, session, future))
        return future

    async def close_tabs(self) -> None:
        """Closes every tab new_tab() opened (the browser goes on, for the next test)."""
        for session, tab in list(self.tabs.items()):
            await self.send("Target.closeTarget", {"targetId": tab.target})
            del self.tabs[session]

    async def new_tab(
        self, width: int, height: int, *, mobile: bool = False, timezone: str = "UTC"
    ) -> Tab:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        tab = Tab(self, attached["sessionId"], target["targetId"])
        self.tabs[attached["sessionId"]] = tab
        for domain in ("Page", "Runtime", "Network", "Log"):
            await tab.send(f"{domain}.enable")
        await tab.send("Emulation.setTimezoneOverride", timezoneId=timezone)
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        return tab


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    process = await asyncio.create_subprocess_exec(
        chromium_path(),
        *_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        url = None
        while url is None:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            if not line:
                raise AssertionError(f"Chromium exited ({await process.wait()}) before listening")
            found = re.search(rb"DevTools listening on (ws://\S+)", line)
            url = found.group(1).decode() if found else None
        # Keep reading its stderr, so a chatty browser never blocks on a full pipe.
        drain = asyncio.create_task(process.stderr.read())
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            browser = Browser(process, ws)
            try:
                yield browser
            finally:
                browser.reader.cancel()
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
