"""Open a model in netron the way a user would and take a screenshot.

Serves the model with the ``netron`` PyPI package on localhost, loads netron's page in headless
Chromium (selenium + the Debian ``chromium`` / ``chromium-driver`` packages), accepts netron's
first-run notice, waits until the graph is drawn or netron shows an error, optionally clicks a
node so the properties panel lists its type, name, description and attributes, and saves a PNG.

    python tools/netron_screenshot.py pruned.onnx docs/netron.png --node fc1

tests/sparse_gemm/test_netron.py uses :func:`open_in_netron` to check that pruned files load without error.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
# netron phones home (analytics, ip lookup); without network those requests fail harmlessly.
_EXTERNAL_NOISE = ("ERR_NAME_NOT_RESOLVED", "ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION", "ERR_ADDRESS_UNREACHABLE")


@dataclass
class NetronPage:
    """What netron showed for one model."""

    error: Optional[str]                 # netron's error dialog text, None when the graph was drawn
    node_ids: list[str] = field(default_factory=list)     # DOM ids of the drawn nodes, e.g. node-name-fc1
    node_texts: dict[str, str] = field(default_factory=dict)  # id -> text drawn in the node box
    sidebar: str = ""                    # the properties panel's text after selecting a node
    console_errors: list[str] = field(default_factory=list)   # page errors, network noise left out


def missing_tools() -> Optional[str]:
    """Why the check cannot run here, or None when netron, selenium and Chromium are all present."""
    for module in ("netron", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"the '{module}' Python package is not installed (pip install {module})"
    if _which(BROWSERS) is None or _which(DRIVERS) is None:
        return "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    return None


def open_in_netron(model_path: str | Path, *, select_node: Optional[str] = None,
                   screenshot: Optional[str | Path] = None, timeout: float = 60.0,
                   window: tuple[int, int] = (1600, 900)) -> NetronPage:
    """Serve ``model_path`` with netron, load it in headless Chromium and report what it shows."""
    import netron

    address = netron.start(str(model_path), address=("localhost", _free_port()), browse=False)
    driver = _chromium(window)
    try:
        driver.get(f"http://{address[0]}:{address[1]}")
        state = _wait_for_graph(driver, timeout)
        page = NetronPage(error=None)
        if state == "alert":
            page.error = driver.execute_script("return document.getElementById('message-text').innerText") or "error"
        else:
            _read_nodes(driver, page)
            if select_node:
                page.sidebar = _select(driver, select_node)
        if screenshot:
            driver.save_screenshot(str(screenshot))
        page.console_errors = _console_errors(driver)
        return page
    finally:
        driver.quit()
        netron.stop(address)


def _which(names: tuple[str, ...]) -> Optional[str]:
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _chromium(window: tuple[int, int]):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSERS)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(_which(DRIVERS)), options=options)


def _body_class(driver) -> str:
    return driver.execute_script("return document.body.className") or ""


def _wait_for_graph(driver, timeout: float) -> str:
    """'default' once the graph is drawn, 'alert' when netron shows an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        classes = _body_class(driver).split()
        if "alert" in classes:
            return "alert"
        if "notification" in classes:  # the first-run cookie notice blocks loading until accepted
            driver.execute_script("document.getElementById('message-button').click()")
        elif "default" in classes and driver.execute_script("return document.querySelectorAll('g.node').length"):
            time.sleep(0.5)  # let the layout settle before reading or capturing it
            return "default"
        time.sleep(0.2)
    raise TimeoutError(f"netron showed neither a graph nor an error within {timeout:.0f}s "
                       f"(page state: '{_body_class(driver)}')")


def _read_nodes(driver, page: NetronPage) -> None:
    nodes = driver.execute_script(
        "return Array.from(document.querySelectorAll('g.node')).map(n => [n.id, n.textContent])")
    page.node_ids = [i for i, _ in nodes if i]
    page.node_texts = {i: t for i, t in nodes if i}


def _select(driver, node_name: str) -> str:
    """Click the node's title (looked up by id: names such as '/fc1/Gemm' are not CSS-safe)."""
    title = driver.execute_script(
        "const n = document.getElementById('node-name-' + arguments[0]);"
        "return n ? n.querySelector('.node-item-type') : null;", node_name)
    if title is None:
        raise ValueError(f"netron drew no node named '{node_name}'")
    title.click()
    time.sleep(1.0)
    return driver.execute_script(
        "const s = document.getElementById('sidebar-content');"
        "const inputs = Array.from(s.querySelectorAll('input, textarea')).map(i => i.value);"
        "return s.innerText + '\\n' + inputs.join('\\n');") or ""


def _console_errors(driver) -> list[str]:
    errors = []
    for entry in driver.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        message = entry.get("message", "")
        host = urlparse(message.split(" ", 1)[0]).hostname
        if host not in (None, "localhost", "127.0.0.1") and any(n in message for n in _EXTERNAL_NOISE):
            continue
        errors.append(message)
    return errors


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file to open")
    parser.add_argument("png", help="where to save the screenshot")
    parser.add_argument("--node", help="name of a node to select, so its properties show")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    reason = missing_tools()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    page = open_in_netron(args.model, select_node=args.node, screenshot=args.png, window=(args.width, args.height))
    if page.error:
        print(f"error: netron could not open {args.model}: {page.error}", file=sys.stderr)
        return 1
    print(f"saved {args.png}: {len(page.node_ids)} nodes drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
