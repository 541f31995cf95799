"""A headless Chromium driven over its DevTools protocol, and a web server for a folder: what the
web page's tests and benchmarks/web_speed.py use. Standard library only: the protocol runs over
the pipe Chromium opens with --remote-debugging-pipe (JSON messages ended by a NUL byte on file
descriptors 3 and 4), so no port, websocket library or downloaded browser is involved.

    with serve(folder) as url, Chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/index.html?image=samples/a.jpg")
        page.wait_for("document.body.dataset.done === '1'")
        results = page.read_text("document.getElementById('results').textContent")
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y chromium"
# Flags for a quiet, reproducible headless run: nothing fetched from the network on start, a
# fresh profile, and WebGL on the CPU (MediaPipe Tasks asks for a WebGL context even with its
# CPU delegate; headless Chromium offers one only through SwiftShader, enabled by this flag).
FLAGS = ("--headless", "--no-first-run", "--no-default-browser-check", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-extensions",
         "--disable-default-apps", "--mute-audio", "--enable-unsafe-swiftshader",
         "--disable-dev-shm-usage", "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    """Chromium exited, a DevTools command failed, or a page did not get where it was asked."""


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome) executable, or None.
    MOBILEVISION_CHROMIUM names one explicitly."""
    explicit = os.environ.get("MOBILEVISION_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process and its DevTools connection (a context manager).

    args: extra command-line flags (e.g. the fake camera's). window: (width, height) of pages.
    Started as root, Chromium gets no CAP_SYS_NICE: it would otherwise raise its own processes'
    priority (nice -8) over everything else on the machine, timings of other programs included.
    """

    def __init__(self, args=(), window=(1280, 900), binary: str | None = None,
                 timeout: float = 60.0):
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError(f"no Chromium found ({INSTALL_HINT}, or set MOBILEVISION_CHROMIUM)")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="mobilevision-chromium-")
        cmd = [binary, *FLAGS, f"--user-data-dir={self._profile}",
               f"--window-size={window[0]},{window[1]}", *args, "about:blank"]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root without it
            if shutil.which("setpriv"):
                cmd = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", *cmd]
        # The browser reads commands on fd 3 and writes replies on fd 4.
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            # close_fds would close fds 3 and 4 after preexec_fn made them; every other fd of
            # this process is non-inheritable (PEP 446), so none leaks into the browser.
            close_fds=False,
            preexec_fn=functools.partial(_fds_3_and_4, to_browser_r, from_browser_w),
            start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict = {}
        self._events: list = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except BrowserError:
            self.close()
            raise

    # -- protocol ----------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one DevTools command and return its result; BrowserError on an error reply."""
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        message = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_browser, data):]
        except OSError as e:
            raise BrowserError(f"{method}: Chromium is gone ({e}){self._tail()}") from e
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    what = "Chromium exited" if self._closed else "no reply in time"
                    raise BrowserError(f"{method}: {what}{self._tail()}")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')} "
                               f"{reply['error'].get('data', '')}".rstrip())
        return reply.get("result", {})

    def events(self, session: str | None = None, method: str | None = None) -> list:
        """The events received so far (of one page session and method, when given)."""
        with self._cond:
            return [e for e in self._events if (session is None or e.get("sessionId") == session)
                    and (method is None or e.get("method") == method)]

    def _tail(self) -> str:
        try:
            self._log.seek(0)
            lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return ("; Chromium's last output: " + " | ".join(lines[-5:])) if lines else ""

    # -- pages -------------------------------------------------------------------------------------

    def new_page(self, width: int = 1280, height: int = 900) -> "Page":
        """A new tab (about:blank) of the given viewport size, attached and with its Page and
        Runtime domains enabled."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        page = Page(self, target, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    def set_permission(self, name: str, setting: str, origin: str) -> None:
        """Grant or deny a permission ("camera" ...: "granted" | "denied" | "prompt")."""
        self.send("Browser.setPermission", {"permission": {"name": name}, "setting": setting,
                                            "origin": origin})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # its whole process group: renderers, GPU process
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        self._reader.join(5)
        with contextlib.suppress(OSError):
            os.close(self._from_browser)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fds_3_and_4(read_fd: int, write_fd: int) -> None:
    """In the child before exec: the command pipe on fd 3 and the reply pipe on fd 4, whatever
    numbers they had (first moved above 4, so neither dup2 overwrites the other)."""
    r = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10)
    w = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(r, 3)
    os.dup2(w, 4)
    os.close(r)
    os.close(w)


class Page:
    """One tab: navigate, evaluate JavaScript, wait, screenshot."""

    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def send(self, method: str, params: dict | None = None, timeout: float | None = None):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        seen = len(self.browser.events(self.session, "Page.loadEventFired"))
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"{url}: {reply['errorText']}")
        self._wait(lambda: len(self.browser.events(self.session, "Page.loadEventFired")) > seen,
                   f"the load event of {url}")

    def evaluate(self, expression: str, timeout: float | None = None):
        """The value of a JavaScript expression (a promise is awaited), as JSON allows."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]}: {text}")
        return reply["result"].get("value")

    def read_text(self, expression: str, piece: int = 1 << 19) -> str:
        """A long string expression's value, read in pieces (one reply stays small)."""
        n = self.evaluate(f"({expression}).length")
        return "".join(self.evaluate(f"({expression}).slice({i}, {i + piece})")
                       for i in range(0, n, piece))

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.05):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {expression!r}"
                                   f"{self.console_tail()}")
            time.sleep(interval)

    def _wait(self, predicate, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.browser.timeout)
        while not predicate():
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def console(self) -> list[str]:
        """The page's console messages and uncaught exceptions so far."""
        out = []
        for e in self.browser.events(self.session):
            if e["method"] == "Runtime.consoleAPICalled":
                args = e["params"].get("args", [])
                out.append(f"console.{e['params']['type']}: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in args))
            elif e["method"] == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append("exception: " + (d.get("exception", {}).get("description")
                                            or d.get("text", "")))
        return out

    def console_tail(self, n: int = 8) -> str:
        lines = self.console()[-n:]
        return ("; the page's console: " + " | ".join(lines)) if lines else ""

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.browser.send("Target.closeTarget", {"targetId": self.target})


def save_screenshot(browser: Chromium, url: str, path, size=(1100, 720),
                    timeout: float = 60.0) -> Path:
    """Open the page at `url` in a new tab of `size` (width, height), wait until it shows a
    result (its first sample's, on index.html), and save the viewport to `path` as a 256-colour
    PNG (about a quarter of full colour's size). Returns the path."""
    import io

    from PIL import Image

    page = browser.new_page(*size)
    try:
        page.goto(url)
        page.wait_for("document.getElementById('results').textContent.length > 0", timeout)
        png = page.screenshot()
    finally:
        page.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as im:
        im.convert("RGB").quantize(256).save(path, optimize=True)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # The MIME types the page needs, whatever the machine's mime.types says.
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json",
                      ".tflite": "application/octet-stream"}

    def log_message(self, *args):  # no line per request on stderr
        pass


@contextlib.contextmanager
def serve(folder):
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
