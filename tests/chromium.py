"""A real headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

`load(url)` opens a page and reports what a person's browser would: errors (exceptions,
console errors, failed loads), every URL the page asked for, values computed in the page, and a
full-page PNG screenshot. Debian's `chromium` package provides the browser (scripts/test
installs it).
"""

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumError(Exception):
    pass


class Page:
    """What loading one page produced."""

    def __init__(self):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.values = None
        self.png: bytes | None = None


class _Pipe:
    def __init__(self, binary, profile):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire():
            # Chromium reads commands on fd 3 and writes on fd 4; pass_fds keeps 3 and 4 open.
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1100,900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        return self._next

    def read(self, timeout):
        """The next message, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                return None
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise ChromiumError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None, timeout=30):
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.read(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise ChromiumError(f"{method}: no answer within {timeout} s")
            if message.get("id") == wanted:
                if "error" in message:
                    raise ChromiumError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def close(self):
        try:
            self.send("Browser.close")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def load(url: str, expression: str | None = None, screenshot: bool = True, binary: str | None = None,
         timeout: float = 60) -> Page:
    """Open `url`, wait for its load event, evaluate `expression` (JSON-able result), screenshot it."""
    binary = binary or find()
    if binary is None:
        raise ChromiumError("no chromium binary found")
    page = Page()
    with tempfile.TemporaryDirectory(prefix="gq-chromium-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Page.navigate", {"url": url}, session=session)
            deadline = time.monotonic() + timeout
            loaded = False
            while not loaded:
                while pipe.events:
                    event = pipe.events.pop(0)
                    loaded |= _note(page, event)
                if loaded:
                    break
                message = pipe.read(max(0.0, deadline - time.monotonic()))
                if message is None:
                    raise ChromiumError(f"{url}: no load event within {timeout} s")
                pipe.events.append(message)
            if expression is not None:
                result = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                   session=session)
                if "exceptionDetails" in result:
                    raise ChromiumError(f"evaluating in the page: {result['exceptionDetails']}")
                page.values = result["result"].get("value")
            if screenshot:
                size = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                shot = pipe.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
                    session=session)
                page.png = base64.b64decode(shot["data"])
            for event in pipe.events:
                _note(page, event)
        finally:
            pipe.close()
    return page


def _note(page, event) -> bool:
    """Record what an event says; return True for the page's load event."""
    method = event.get("method")
    params = event.get("params", {})
    if method == "Page.loadEventFired":
        return True
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        page.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
    elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
        page.errors.append(f"console.error: {params.get('args')}")
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        page.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    elif method == "Network.loadingFailed":
        page.errors.append(f"load failed: {params.get('errorText')}")
    elif method == "Network.requestWillBeSent":
        page.requests.append(params["request"]["url"])
    return False
