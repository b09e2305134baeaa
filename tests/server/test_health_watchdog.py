"""/health with a hung scheduler, the --watchdog-timeout, and start-up: real server processes.

The test hook SGLANG_TEST_BLOCK_SCHEDULER_RID makes the scheduler hang in the step that would
run that request (for "warmup": during start-up, so the server never becomes ready).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from sglang.test.server_utils import Proc, free_port, launch_server

BLOCK_RID = "block-the-scheduler"


@pytest.fixture(scope="module")
def hung(tiny_model, log_dir):
    env = {"SGLANG_HEALTH_CHECK_TIMEOUT": "1", "SGLANG_TEST_BLOCK_SCHEDULER_RID": BLOCK_RID,
           "SGLANG_DEAD_SCHEDULER_EXIT_DELAY": "120"}  # answers 503 while the test looks
    proc = launch_server(tiny_model, log_dir, "watchdog", ["--max-total-tokens", "1024",
                         "--watchdog-timeout", "8"], env)
    yield proc
    proc.stop()


def _poll(fn, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_hung_scheduler_health_503_then_watchdog_exit(hung):
    url = hung.url
    assert requests.get(url + "/health", timeout=10).status_code == 200
    result: dict = {}

    def blocked_request():
        r = requests.post(url + "/generate", timeout=120, json={
            "text": "Once upon a time", "rid": BLOCK_RID, "sampling_params": {"max_new_tokens": 4}})
        result["status"], result["body"] = r.status_code, r.json()

    t = threading.Thread(target=blocked_request, daemon=True)
    t.start()
    # the scheduler hangs: /health goes 503 (SGLANG_HEALTH_CHECK_TIMEOUT=1) while the HTTP
    # process still answers, before the watchdog (8 s) ends the scheduler
    _poll(lambda: "test hook: blocking the scheduler" in hung.log_tail(200))
    assert requests.get(url + "/health", timeout=10).status_code == 503
    assert "Scheduler watchdog timeout" not in hung.log_tail(400)
    # the watchdog fires: stacks in the log, scheduler gone; the in-flight request gets a 5xx
    t.join(60)
    assert not t.is_alive(), "the in-flight request hung"
    assert result["status"] == 503, result
    assert "scheduler process exited" in result["body"]["error"]["message"]
    log = hung.log_tail(400)
    assert "Scheduler watchdog timeout" in log and "--watchdog-timeout 8.0" in log
    assert "Thread 0x" in log and "apply_test_hooks" in log  # faulthandler's dump
    assert "scheduler process exited (code 3)" in log
    # the HTTP process keeps answering, with 503s (until SGLANG_DEAD_SCHEDULER_EXIT_DELAY)
    assert hung.alive()
    assert requests.get(url + "/health", timeout=10).status_code == 503
    assert requests.get(url + "/ready", timeout=10).status_code == 503
    r = requests.post(url + "/generate", json={"text": "hi"}, timeout=10)
    assert r.status_code == 503 and "scheduler process exited" in r.json()["error"]["message"]
    assert requests.get(url + "/get_load", timeout=10).status_code == 503


def test_health_and_ready_503_while_starting(tiny_model, log_dir):
    port = free_port()
    log_path = os.path.join(log_dir, "starting.log")
    with open(log_path, "w") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model,
             "--port", str(port), "--host", "127.0.0.1", "--max-total-tokens", "512"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SGLANG_TEST_BLOCK_SCHEDULER_RID": "warmup"},
        )
    proc = Proc("starting", popen, f"http://127.0.0.1:{port}", log_path)
    try:
        def health():
            try:
                return requests.get(proc.url + "/health", timeout=5).status_code
            except requests.ConnectionError:
                assert proc.alive(), proc.log_tail()
                return None

        assert _poll(health) == 503
        _poll(lambda: "blocking the scheduler on rid=warmup" in proc.log_tail(100))
        assert health() == 503
        assert requests.get(proc.url + "/ready", timeout=5).status_code == 503
        r = requests.post(proc.url + "/generate", json={"text": "hi"}, timeout=5)
        assert r.status_code == 503 and "starting" in r.json()["error"]["message"]
    finally:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait(10)


@pytest.mark.parametrize("argv,needle", [
    (["--dp-size", "0"], "--dp-size must be >= 1, got 0"),
    (["--enable-torch-compile"], "drop --enable-torch-compile"),
    (["--cuda-graph-max-bs=8"], "--cuda-graph-max-bs is an SGLang flag"),
    (["--chat-template", "no-such-template"], "neither a file nor a shipped template (chatml"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_refused_flags_exit_2_with_a_message(tiny_model, argv, needle):
    r = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model,
                        *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-800:]
