"""Run the app in a subprocess on a free loopback port (for tests and the screenshot script), and Chromium's flags.

    with running_app("/path/to/checkpoints") as url:
        ...  # the server answers at url; it is terminated on exit, whatever happened
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

APP = Path(__file__).resolve().parent / "main.py"
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, headless, quiet: no sandbox (containers), no GPU, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_app(checkpoint_dir: str | Path | None = None, *, port: int | None = None, extra_args: list[str] = (),
                timeout: float = 120.0) -> Iterator[str]:
    """Start `python app/main.py` on 127.0.0.1:`port` (free one by default) and yield its URL; always stop it."""
    port = port or free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(APP), *(["--checkpoint-dir", str(checkpoint_dir)] if checkpoint_dir else []), *extra_args]
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile("w+") as logf:
        proc = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=APP.parent.parent)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    logf.seek(0)
                    raise RuntimeError(f"the app did not start at {url} (exit code {proc.poll()}):\n{logf.read()[-4000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
