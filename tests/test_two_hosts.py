"""Two hosts, each in its own network namespace, serving one Redis; one is cut off.

Its job runs again on the other host after the lease; when it comes back, its late
outcome is discarded: the future keeps the first one stored. Needs root and iproute2
(CI here runs as root); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

import taskq
from tests.broker_jobs import ROOT, on_host, runs
from tests.jobs import wait_until
from tests.redis_server import RedisServer

SECRET = "two-hosts-share-this-secret-32ch"
LEASE = 2.0


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"tqprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create a network namespace here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Host:
    """A network namespace joined to this one by a veth pair on its own /24."""

    def __init__(self, name, subnet):
        tag = uuid.uuid4().hex[:6]
        self.ns = f"tq{name}{tag}"
        self.outside, self.inside = f"tq{name}{tag}o", f"tq{name}{tag}i"
        self.gateway, self.address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        ip("netns", "add", self.ns)
        ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        ip("link", "set", self.inside, "netns", self.ns)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.outside)
        ip("link", "set", self.outside, "up")
        ip("netns", "exec", self.ns, "ip", "addr", "add", f"{self.address}/24", "dev", self.inside)
        ip("netns", "exec", self.ns, "ip", "link", "set", self.inside, "up")
        ip("netns", "exec", self.ns, "ip", "link", "set", "lo", "up")

    def cut(self):
        ip("link", "set", self.outside, "down")

    def reconnect(self):
        ip("link", "set", self.outside, "up")

    def run_worker(self, url, queue, log_path):
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in remove())
        env = {**os.environ, "PYTHONPATH": ROOT, "TASKQ_SECRET": SECRET, "TASKQ_TEST_HOST": self.ns}
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-m",
                "taskq",
                "worker",
                url,
                "--queue",
                queue,
                "--workers",
                "1",
                "--lease",
                str(LEASE),
                "-v",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def remove(self):
        if hasattr(self, "log"):
            self.log.close()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True)


@pytest.mark.timeout(180)
def test_a_host_cut_off_loses_its_job_to_the_other_and_its_late_outcome_is_discarded(tmp_path):
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    hosts = []
    workers = []
    server = None
    try:
        hosts = [Host("a", 41), Host("b", 42)]
        server = RedisServer(
            tmp_path, "--bind", "127.0.0.1", *(h.gateway for h in hosts), "--protected-mode", "no"
        )
        server.start()
        queue = "two-hosts"
        log = str(tmp_path / "runs")
        client = taskq.Pool(0, broker=server.url, queue=queue, secret=SECRET)
        future = client.schedule(on_host, (log, 6.0))
        a, b = hosts
        workers.append(
            a.run_worker(f"redis://{a.gateway}:{server.port}/0", queue, tmp_path / "a.log")
        )
        wait_until(lambda: runs(log) == [a.ns], 60, "the job to start on host a")
        a.cut()
        workers.append(
            b.run_worker(f"redis://{b.gateway}:{server.port}/0", queue, tmp_path / "b.log")
        )
        assert future.result(timeout=90) == b.ns  # b ran it after a's lease expired
        assert runs(log) == [a.ns, b.ns]
        a.reconnect()
        a_log = tmp_path / "a.log"
        wait_until(
            lambda: "discarded" in a_log.read_text() or "lease lost" in a_log.read_text(),
            60,
            "host a to learn that its job went elsewhere",
        )
        time.sleep(LEASE)  # whatever a does now, the first outcome stands
        assert client.job(future.job_id).result(timeout=10) == b.ns
        assert client._broker.status().succeeded == 1
        client.shutdown(wait=False)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(30)
        if server is not None:
            server.stop()
        for host in hosts:
            host.remove()
