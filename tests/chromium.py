"""Headless Chromium driven over the DevTools protocol on a pipe (standard library only).

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and
write replies and events to descriptor 4, each message one JSON text ended by a NUL byte. This
gives what ``--dump-dom`` cannot: an exact viewport (``--window-size`` is clamped to 500 px,
the device-metrics override is not), computed styles and boxes read after layout, clicks, and
screenshots of any screen of the page. Debian's ``/usr/bin/chromium`` only; nothing downloads a
browser. Chromium runs in its own process group, killed whole on close.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
         "--remote-debugging-pipe"]
TIMEOUT = 60.0  # seconds for one protocol reply or page load


class BrowserError(RuntimeError):
    """Chromium did not answer, or answered a command with an error."""


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, profile_dir: Path | str | None = None):
        if not CHROMIUM.exists():
            raise BrowserError(f"{CHROMIUM} not found: apt-get install -y chromium (Debian's package)")
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=profile_dir)  # fresh: no earlier state
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium expects its command pipe on fd 3 and its reply pipe on fd 4.
        self._proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)),
            start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self.session: str | None = None

    def __enter__(self) -> Browser:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            os.killpg(os.getpgid(self._proc.pid), signal.SIGKILL)  # its zygote and renderers share the group
        except ProcessLookupError:
            pass
        self._proc.wait(timeout=30)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass

    # --- protocol ---------------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _read(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"no message from chromium within {timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed its pipe (exit code {self._proc.poll()})")
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(text)

    def wait_event(self, method: str, timeout: float = TIMEOUT) -> dict:
        for i, event in enumerate(self._events):
            if event.get("method") == method:
                return self._events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(max(deadline - time.monotonic(), 0.01))
            if event.get("method") == method:
                return event
            self._events.append(event)

    # --- page ---------------------------------------------------------------------------------------

    def viewport(self, width: int, height: int) -> None:
        """An exact CSS viewport (a phone's when narrower than 600 px: mobile layout and touch)."""
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": width < 600})

    def open(self, url: str) -> None:
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        if "loaderId" in self.send("Page.navigate", {"url": url}):  # none: a same-document (#fragment) move
            self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """A JavaScript expression's value (JSON-able), awaited when it is a promise."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {})}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT, every: float = 0.25):
        """Poll a JavaScript expression until it is truthy (a page that renders after load: MLflow's UI)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not true within {timeout:.0f} s: {expression[:120]}")
            time.sleep(every)

    def screenshot(self, path: Path, *, screens: int = 1, first: int = 1) -> Path:
        """A PNG of ``screens`` viewport heights of the page, from the top of screen ``first`` (1: the top)."""
        width, height = self.evaluate("[window.innerWidth, window.innerHeight]")
        clip = {"x": 0, "y": height * (first - 1), "width": width, "height": height * screens, "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        Path(path).write_bytes(base64.b64decode(data["data"]))
        return Path(path)
