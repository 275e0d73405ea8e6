"""A real Git LFS server for tests: giftless on a free loopback port, local storage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = """AUTH_PROVIDERS:
  - giftless.auth.allow_anon:read_write
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options:
        path: {storage}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LfsServer:
    """giftless serving ``url`` (an LFS endpoint) with objects under ``storage``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config = root / "giftless.yaml"
        self.config.write_text(CONFIG.format(storage=self.storage))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/test/repo"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "giftless.log"

    def start(self) -> None:
        env = {**os.environ, "GIFTLESS_CONFIG_FILE": str(self.config)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flask",
                    "--app",
                    "giftless.wsgi_entrypoint",
                    "run",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=log,
                cwd=self.root,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"giftless exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers (404 for /): up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("giftless did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def requests(self) -> list[str]:
        """The HTTP requests the server has answered, as its log lists them ("POST
        /test/repo/objects/batch"…), oldest first."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            start = line.find('"')
            end = line.find(" HTTP/", start)
            if start >= 0 and end > start:
                found.append(line[start + 1 : end])
        return found

    def downloads(self) -> list[str]:
        """Object downloads the server has answered (their oids), oldest first."""
        return [
            r.split("?")[0].rsplit("/", 1)[-1]
            for r in self.requests()
            if r.startswith("GET ") and "/objects/" in r
        ]

    def objects(self) -> set[str]:
        """Names of the object files the server stores."""
        return {p.name for p in self.storage.rglob("*") if p.is_file()}
