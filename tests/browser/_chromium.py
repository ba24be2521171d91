"""Launch Debian's Chromium through Playwright's Python API, or say why it cannot be done.

Playwright's own browser download is not reachable from CI, so the tests drive the system
``chromium`` (``apt-get install chromium``) with ``executable_path``, headless, with a fresh
profile in a temporary folder and the background services that would reach the network off.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Where the screenshots go; CI keeps this folder (test-artifacts/ is ignored by git).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
#: Environment variable that turns the browser tests on (scripts/browser_tests.sh sets it).
ENABLE_VAR = "MPROFILE_BROWSER_TESTS"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """The Chromium binary to drive: $MPROFILE_CHROMIUM, or Debian's package, or None."""
    for candidate in (os.environ.get("MPROFILE_CHROMIUM"), "/usr/bin/chromium",
                      "/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def skip_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if os.environ.get(ENABLE_VAR) != "1":
        return (f"browser tests are off; run scripts/browser_tests.sh (sets {ENABLE_VAR}=1)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if chromium_path() is None:
        return "Chromium is missing (apt-get install -y chromium)"
    return None


@contextmanager
def browser(tmp_path: Path, width: int = 1280, height: int = 900, *,
            javascript: bool = True) -> Iterator[Any]:
    """A headless Chromium with a fresh user-data dir, closed at the end (``javascript``
    False: scripts off, as an untrusted notebook or a sanitizing viewer shows a page)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
            java_script_enabled=javascript,
        )
        try:
            yield context
        finally:
            context.close()


class ConsoleLog:
    """Collects a page's console errors and uncaught exceptions."""

    def __init__(self, page: Any, ignore: tuple[str, ...] = ()) -> None:
        self.errors: list[str] = []
        self.ignore = ignore
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(word in msg.text for word in self.ignore):
            self.errors.append(f"console.error: {msg.text}")


def screenshot(page: Any, name: str, **kwargs: Any) -> Path:
    """Save a PNG under ARTIFACTS and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), **kwargs)
    return path
