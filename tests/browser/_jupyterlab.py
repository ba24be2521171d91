"""Start a throw-away JupyterLab server for a test: 127.0.0.1, a random port, a random
token, a temporary root folder and temporary Jupyter config/data/runtime folders (so the
user's settings and the network play no part), bounded waits, and a clean stop."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 90.0


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    config_dir: Path
    log: Path

    def tree(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"

    def set_setting(self, plugin: str, values: dict) -> None:
        """Write user settings of ``plugin`` (``"@jupyterlab/apputils-extension:themes"``);
        the page reads them at its next load."""
        package, name = plugin.split(":")
        folder = self.config_dir / "lab" / "user-settings" / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))

    def set_theme(self, theme: str) -> None:
        self.set_setting("@jupyterlab/apputils-extension:themes", {"theme": theme})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jupyterlab_missing() -> str | None:
    """Why JupyterLab cannot be started here (None when it can)."""
    try:
        import jupyterlab  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as exc:
        return f"jupyterlab is not installed ({exc}); pip install jupyterlab"
    return None


@contextmanager
def jupyterlab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "lab-root"
    dirs = {name: tmp_path / f"jupyter-{name}" for name in ("config", "data", "runtime")}
    for path in (root, *dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
               IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
           "--ServerApp.shutdown_no_activity_timeout=600"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, dirs["config"], log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{lab.url}/api/status?token={token}",
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer in {START_TIMEOUT:.0f} s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.3)
        # No news pop-up, no update checks.
        lab.set_setting("@jupyterlab/apputils-extension:notification",
                        {"fetchNews": "false", "checkForUpdates": False})
        yield lab
    finally:
        # Stop the server we started and its kernels (one process group, ours).
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # kernels left behind, if any
        except ProcessLookupError:
            pass
