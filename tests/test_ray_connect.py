"""connect_ray: joins an address, or starts a local Ray whose dashboard listens on 127.0.0.1 only; leaves a
Ray the process has already alone; and is the only place the programs call ray.init (Ray stubbed)."""
import re
import socket
from pathlib import Path

import pytest
import ray

from vsr_core.ray_connect import connect_ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inits(monkeypatch) -> list[dict]:
    made = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: made.append(kw) or "the context")
    return made


def test_an_address_is_joined_as_given(inits):
    assert connect_ray("auto", log_to_driver=False, configure_logging=False) == "the context"
    assert inits == [{"address": "auto", "log_to_driver": False, "configure_logging": False}]


def test_a_local_instance_binds_its_dashboard_to_loopback_whether_or_not_it_has_one(inits):
    connect_ray()
    connect_ray(dashboard=False)
    connect_ray(dashboard=True)
    assert [kw["include_dashboard"] for kw in inits] == [None, False, True]
    assert all(kw["dashboard_host"] == "127.0.0.1" and "address" not in kw for kw in inits)


def test_a_taken_dashboard_port_is_replaced_and_said(inits, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        connect_ray(dashboard=True, dashboard_port=port)
    assert inits[0]["dashboard_port"] not in (port, None)
    assert f"port {port} is in use" in capsys.readouterr().err


def test_a_ray_the_process_has_already_is_not_started_again(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init({kw}) called"))
    assert connect_ray("auto") is None


def test_connect_ray_is_the_only_ray_init_of_the_programs():
    calls = [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}"
             for folder in ("vsr_core", "tune", "serve") for path in (ROOT / folder).rglob("*.py")
             if path.name != "ray_connect.py"
             for text in [path.read_text()] for m in re.finditer(r"\bray\.init\(", text)]
    assert not calls, calls
