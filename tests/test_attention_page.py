"""The attention page (``qkv attention ... --html``) in a real browser.

Headless Chromium opens the page from a file and is driven over the DevTools
protocol (``--remote-debugging-pipe``: JSON messages ending in a NUL byte, commands
on the browser's fd 3, replies and events on its fd 4; no websocket, no extra
package). The test reads the page's DOM, switches the head and the attention as a
person would (the select boxes, the address), hovers a token with a real mouse
event, and compares a screenshot's pixels with the colours the weights must give.

Without Chromium the browser test skips and says how to install it:
``sudo apt-get install --no-install-recommends chromium`` (Debian's package), or
point ``QKV_CHROMIUM`` at a Chrome/Chromium executable.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from qkv.viz import AttentionMap, attention_page, write_attention_page
from qkv.viz.page import shade

INSTALL = "sudo apt-get install --no-install-recommends chromium"


def chromium_executable() -> str | None:
    candidates = [os.environ.get("QKV_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


# --- the page as text ---------------------------------------------------------------------------


def make_map(kind: str, layers: int, heads: int, q: int, k: int, seed: int) -> AttentionMap:
    """Random weights with one clear winner per row that moves with layer and head,
    so that switching the head must move the outlined cells."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, heads, q, k, generator=generator)
    for layer in range(layers):
        for head in range(heads):
            for row in range(q):
                logits[layer, head, row, (row + head + 2 * layer) % k] += 4.0
    tokens = ["[CLS]", "the", "dog", "ate", "</script>&<b>", "it", "was"]
    return AttentionMap(
        kind, tuple(range(layers)), layers, logits.softmax(-1), tuple(tokens[:q]), tuple(tokens[:k])
    )


@pytest.fixture(scope="module")
def maps() -> list[AttentionMap]:
    return [make_map("encoder", 2, 3, 6, 6, 0), make_map("cross", 2, 3, 4, 6, 1)]


def embedded_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page)
    assert found is not None
    return json.loads(found.group(1))


def test_page_is_one_file_with_no_network_and_the_weights_inside(maps):
    page = attention_page(maps, title="dog </script>")
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"https?://|<link|src=|@import|url\(", page)
    assert "</script>&<b>" not in page  # a token cannot end the script element early
    data = embedded_data(page)
    assert data["title"] == "dog </script>"
    assert [m["kind"] for m in data["maps"]] == ["encoder", "cross"]
    assert data["maps"][1]["keys"][4] == "</script>&<b>"
    torch.testing.assert_close(
        torch.tensor(data["maps"][1]["weights"]), maps[1].weights, atol=5e-5, rtol=0
    )
    with pytest.raises(ValueError, match="no attention maps"):
        attention_page([])


def test_shade_matches_the_colour_map_ends():
    assert shade(0.0) == (247, 251, 255) and shade(1.0) == (8, 48, 107)
    assert shade(0.5) == (107, 174, 214) and shade(2.0) == shade(1.0)


# --- a tiny DevTools client ---------------------------------------------------------------------


class Browser:
    """Headless Chromium over ``--remote-debugging-pipe``, one page attached."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Above fd 10, so that putting them on 3 and 4 in the child cannot clobber one
        # with the other.
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def on_3_and_4() -> None:
            os.dup2(child_r, 3)  # dup2 makes them inheritable
            os.dup2(child_w, 4)

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]
        self.log = log
        with open(log, "wb") as err:
            # close_fds=False: the fds put on 3 and 4 must survive into chromium (Python's
            # own descriptors are not inheritable, so nothing else leaks).
            self.process = subprocess.Popen(
                [executable, *flags, "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                close_fds=False,
                preexec_fn=on_3_and_4,
            )
        os.close(child_r)
        os.close(child_w)
        self._send, self._recv = to_browser_w, from_browser_r
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []  # every event seen, in order
        self._unclaimed: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.page(f"{domain}.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=1000,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from chromium; its log:\n{self.log.read_text()}")
            ready, _, _ = select.select([self._recv], [], [], remaining)
            if ready:
                chunk = os.read(self._recv, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe:\n{self.log.read_text()}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _keep(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        self._unclaimed.append(message)

    def call(self, method: str, session: str | None = None, timeout: float = 20, **params: Any):
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._keep(reply)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def wait_event(self, method: str, timeout: float = 20) -> dict[str, Any]:
        for i, event in enumerate(self._unclaimed):
            if event.get("method") == method:
                return self._unclaimed.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            self.events.append(message)
            if message.get("method") == method:
                return message
            self._unclaimed.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {expression}")
            time.sleep(0.05)

    def navigate(self, url: str) -> None:
        self._unclaimed.clear()
        self.page("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        self.wait_until("document.body.dataset.ready === '1'")

    def errors(self, since: int = 0) -> list[str]:
        """Script errors among the events from number ``since`` on."""
        found = []
        for event in self.events[since:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def requested(self, since: int = 0) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events[since:]
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # it may be gone
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._send)
        os.close(self._recv)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium_executable()
    if executable is None:
        pytest.skip(f"headless Chromium not found; to run the page test: {INSTALL}")
    tmp = tmp_path_factory.mktemp("chromium")
    session = Browser(executable, tmp / "profile", tmp / "chromium.log")
    yield session
    session.close()


# --- the page in the browser --------------------------------------------------------------------

STATE = """JSON.stringify({
  body: Object.assign({}, document.body.dataset),
  hash: location.hash,
  max: [...document.querySelectorAll("#matrix td.max")].map(td => [+td.dataset.q, +td.dataset.k]),
  rows: document.querySelectorAll("#matrix tr").length - 1,
  top: [...document.querySelectorAll(".tok.k.top")].map(s => +s.dataset.k),
  keyColours: [...document.querySelectorAll(".tok.k")]
    .map(s => getComputedStyle(s).backgroundColor),
  errors: document.getElementById("errors").textContent,
})"""


def state(browser: Browser) -> dict[str, Any]:
    return json.loads(browser.evaluate(STATE))


def argmax_cells(weights: torch.Tensor) -> list[list[int]]:
    return [[row, int(weights[row].argmax())] for row in range(weights.shape[0])]


def rgb(colour: tuple[int, int, int]) -> str:
    return f"rgb({colour[0]}, {colour[1]}, {colour[2]})"


def test_the_page_follows_layer_head_and_hover_as_the_weights_say(browser, maps, tmp_path):
    path = write_attention_page(tmp_path / "maps.html", maps, title="test page")
    encoder, cross = maps
    start = len(browser.events)
    browser.navigate(f"{path.as_uri()}#kind=encoder&layer=1&head=2")

    # The address chose layer 1, head 2: the outlined cells are that head's row maxima.
    now = state(browser)
    assert now["body"] | {"ready": "1"} == {
        "kind": "encoder",
        "layer": "1",
        "head": "2",
        "query": "",
        "ready": "1",
    }
    assert now["rows"] == 6
    assert now["max"] == argmax_cells(encoder.layer(1)[2])

    # A person switches the head: the outlined cells move to head 0's maxima.
    browser.evaluate(
        "{ const h = document.getElementById('head'); h.value = '0';"
        " h.dispatchEvent(new Event('change')); }"
    )
    now = state(browser)
    assert now["body"]["head"] == "0" and now["hash"] == "#kind=encoder&layer=1&head=0"
    assert now["max"] == argmax_cells(encoder.layer(1)[0])
    assert now["max"] != argmax_cells(encoder.layer(1)[2])

    # The mean over heads.
    browser.evaluate(
        "{ const h = document.getElementById('head'); h.value = 'mean';"
        " h.dispatchEvent(new Event('change')); }"
    )
    assert state(browser)["max"] == argmax_cells(encoder.layer(1).mean(dim=0))

    # Another attention through the address (a link someone sent): cross, layer 0, head 1.
    browser.evaluate("location.hash = '#kind=cross&layer=0&head=1'")
    browser.wait_until("document.body.dataset.kind === 'cross'")
    now = state(browser)
    assert now["rows"] == 4 and now["body"]["layer"] == "0" and now["body"]["head"] == "1"
    weights = cross.layer(0)[1]  # (4 queries, 6 keys)
    assert now["max"] == argmax_cells(weights)

    # Hover the third query word with a real mouse event: the key words take the
    # shades of its row, its strongest key is marked.
    box = browser.evaluate(
        "JSON.stringify(document.querySelector('.tok.q[data-q=\"2\"]').getBoundingClientRect())"
    )
    box = json.loads(box)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    browser.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    browser.wait_until("document.body.dataset.query === '2'")
    now = state(browser)
    row = weights[2]
    assert now["top"] == [int(row.argmax())]
    page_row = torch.tensor(embedded_data(path.read_text())["maps"][1]["weights"][0][1][2])
    assert now["keyColours"] == [rgb(shade(float(w / page_row.max()))) for w in page_row]
    assert now["hash"] == "#kind=cross&layer=0&head=1&query=2"

    # The screenshot: every cell is drawn in the colour its weight gives.
    cells = json.loads(
        browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('#matrix td')].map(td => {"
            "const r = td.getBoundingClientRect();"
            "return [+td.dataset.q, +td.dataset.k, r.x + r.width / 2, r.y + r.height / 2]; }))"
        )
    )
    from PIL import Image

    shot = browser.page("Page.captureScreenshot", format="png")
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    page_weights = torch.tensor(embedded_data(path.read_text())["maps"][1]["weights"][0][1])
    vmax = float(page_weights.max())
    assert len(cells) == 4 * 6
    for q, k, cx, cy in cells:
        want = shade(float(page_weights[q, k]) / vmax)
        got = image.getpixel((int(cx), int(cy)))
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 2, (q, k, got, want)

    # No script errors, nothing fetched but the page itself.
    assert browser.errors(start) == [] and state(browser)["errors"] == ""
    requested = browser.requested(start)
    assert requested and all(url.startswith("file://") for url in requested), requested


def test_a_broken_address_or_script_error_is_shown_on_the_page(browser, maps, tmp_path):
    path = write_attention_page(tmp_path / "page.html", maps[:1], title="one")
    start = len(browser.events)
    browser.navigate(f"{path.as_uri()}#kind=nothing&layer=99&head=7")
    now = state(browser)
    # Unknown values fall back to what exists: the last layer, the mean over heads.
    assert now["body"]["kind"] == "encoder" and now["body"]["layer"] == "1"
    assert now["body"]["head"] == "mean"
    browser.evaluate("setTimeout(() => { throw new Error('boom'); }, 0)")
    browser.wait_until("document.getElementById('errors').textContent.includes('boom')")
    assert any("boom" in e for e in browser.errors(start))
