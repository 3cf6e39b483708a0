"""A real S3-compatible server for the bucket tests: moto in server mode, as a subprocess.

`S3Server` starts `python -m moto.server` on a free loopback port, waits until it answers S3
calls, and stops its process at the end. Each test gets a bucket of its own (`S3Bucket`), and
the environment a Tuneforge process needs to use it (`env`).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.live import free_port, tail

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tuneforge-test", "AWS_SECRET_ACCESS_KEY": "tuneforge-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    log_path: Path
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"moto server exited with {self.popen.returncode}:\n"
                                     f"{tail(self.log_path)}")
            try:
                self.client().list_buckets()
                return
            except Exception as exc:  # not listening yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"moto server not answering after {timeout_s}s ({last!r}):\n"
                             f"{tail(self.log_path)}")

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"])

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


@dataclass
class S3Bucket:
    server: S3Server
    name: str
    prefix: str = "tuneforge"

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def env(self) -> dict[str, str]:
        """What a Tuneforge process needs to keep its artifacts in this bucket."""
        return {"TUNEFORGE_ARTIFACT_URL": self.url, "AWS_ENDPOINT_URL": self.server.endpoint,
                **CREDENTIALS}

    def objects(self) -> dict[str, int]:
        """Every object under the prefix: name relative to it, and size."""
        found: dict[str, int] = {}
        client = self.server.client()
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=self.prefix + "/"):
            for entry in page.get("Contents", []):
                found[entry["Key"][len(self.prefix) + 1:]] = entry["Size"]
        return found


def new_bucket(server: S3Server) -> S3Bucket:
    name = "tuneforge-test-" + secrets.token_hex(6)
    server.client().create_bucket(Bucket=name)
    return S3Bucket(server, name)
