"""Headless Chromium driven over the Chrome DevTools Protocol, for tests that click: open a page,
wait for what its scripts render, click a link as a user would (a real mouse event at the link's
place), see where the window went and which tabs opened. Talks to the browser's own debugging
WebSocket with websocket-client; no driver to install beside ``chromium``."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


class Chromium:
    """One headless browser (its own profile under ``profile``); ``page()`` opens a tab."""

    def __init__(self, binary: str, profile: Path):
        import websocket

        shutil.rmtree(profile, ignore_errors=True)
        profile.mkdir(parents=True)
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--window-size=1280,900",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open its debugging port (exit {self.process.poll()})")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=120)
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """One CDP command; its result (RuntimeError with the browser's error)."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def page(self) -> "Tab":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, session, target)
        tab.send("Page.enable")
        tab.send("Runtime.enable")
        return tab

    def pages(self) -> list[dict[str, Any]]:
        """Every open tab: ``{targetId, url, ...}``."""
        return [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Tab:
    def __init__(self, browser: Chromium, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target

    def send(self, method: str, params: dict | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def go(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> Any:
        """Until ``expression`` is truthy in the page; its value. TimeoutError with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        body = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''")
        raise TimeoutError(f"not true after {timeout:.0f} s: {expression}\nthe page: {body}")

    def click(self, selector: str) -> None:
        """A left click with the mouse at the middle of the first element ``selector`` matches."""
        box = self.wait_for(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); if (!el) return null;"
                            " el.scrollIntoView({block: 'center', inline: 'center'}); const r = el.getClientRects()[0] || el.getBoundingClientRect();"
                            " const x = r.x + r.width / 2, y = r.y + r.height / 2, hit = document.elementFromPoint(x, y);"
                            " return r.width ? {x, y, hit: !!hit && (hit === el || el.contains(hit)),"
                            " top: hit ? hit.outerHTML.slice(0, 300) : null} : null; })()")
        if not box["hit"]:
            raise AssertionError(f"{selector} is covered where a user would click it: {box['top']}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                                                   "clickCount": 0 if kind == "mouseMoved" else 1})

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
