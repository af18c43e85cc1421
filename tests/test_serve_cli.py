"""`python -m serve` as an operator runs it: it serves, and SIGTERM (systemd, Docker,
Kubernetes) shuts Serve and Ray down like Ctrl-C, leaving no Ray process behind."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from test_serve import save_test_checkpoint
from vsr_core.netutil import free_port




@pytest.mark.ray
def test_sigterm_stops_serve_and_ray_completely(tmp_path):
    checkpoint = save_test_checkpoint(tmp_path / "run" / "latest.pth", seed=1, step=7)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--jobs-dir", str(tmp_path / "jobs"), "--num-cpus", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json().get("step") == 7:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.5)
        else:
            pytest.fail("python -m serve did not come up")
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        started = psutil.Process(server.pid).children(recursive=True)
        titles = {" ".join(p.cmdline()) for p in started if p.is_running()}
        assert any("raylet" in t for t in titles) and any("ray::" in t for t in titles), titles
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=90)
        assert "shutting down" in output
        deadline = time.time() + 30
        while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
            time.sleep(0.5)
        left = [" ".join(p.cmdline())[:60] for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"still running after SIGTERM: {left}"
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize("script", ["serve/demo.py", "serve/client.py", "serve/app.py"])
def test_the_scripts_in_serve_run_as_scripts(script):
    """Run as `python serve/X.py`, the script's folder comes first on sys.path: no module in
    serve/ may shadow one of the standard library's (an `http.py` once broke `make demo`)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "usage" in run.stdout, run.stderr[-2000:]
