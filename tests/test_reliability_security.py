"""Security: checkpoints never run code, servers bind to 127.0.0.1 unless told otherwise,
Ray's dashboard keeps token auth, the HTTP API key is read and compared safely, an unexpected
error reaches the client as an id only. (What a running deployment reveals: test_serve_replicas.py.)"""
import hmac
import logging
import os
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

import serve.__main__ as serve_main
import serve.app as serve_app
import serve.model as serve_model
import serve.settings as serve_settings
from serve.api import _install_error_handlers
from serve.models import ModelStore
from vsr_core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from vsr_core.memory import MemoryBudgetError

ROOT = Path(__file__).resolve().parent.parent

SOURCE_DIRS = ("vsr_core", "serve", "tune", "benchmarks", "tests", "docs")  # the configs: vsr_core/configs
TEXT_SUFFIXES = {".py", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".md", ".txt", ".env"}


def repo_files() -> list[Path]:
    files = [ROOT / name for name in ("Makefile", "README.md", "pyproject.toml") if (ROOT / name).is_file()]
    for folder in SOURCE_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


# --- checkpoints ------------------------------------------------------------------------------------------
class Exploit:
    """Unpickling this calls os.system: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoints(tmp_path: Path, marker: Path) -> dict[str, Path]:
    payload = {"step": 1, "epoch": 0, "model_state_dict": Exploit(marker), "optimizer_state_dict": {},
               "scaler_state_dict": {}, "scheduler_state_dict": {}, "config": {"PRESET": "tiny"},
               "training_phase": "pretrain"}
    torch_zip = tmp_path / "zip" / "latest.pth"
    torch_zip.parent.mkdir()
    torch.save(payload, torch_zip)  # torch's zip format, pickled code inside
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(payload, protocol=2))  # a legacy plain pickle
    return {"zip": torch_zip, "raw": raw}


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Exploit(marker)))  # the exploit works when unpickled blindly ...
    assert marker.exists()
    marker.unlink()

    from vsr_core.config import TrainConfig
    from vsr_core.engine.trainer import Trainer
    from vsr_core.inference import Upscaler

    for name, path in _malicious_checkpoints(tmp_path, marker).items():
        loaders = {
            "load_checkpoint": lambda: load_checkpoint(path),
            "model_from_checkpoint": lambda: model_from_checkpoint(path),
            "Upscaler.from_checkpoint": lambda: Upscaler.from_checkpoint(path, device="cpu"),
            "serve load_model": lambda: serve_model.load_model(serve_app.ServeSettings(checkpoint=str(path))),
            "serve ModelStore": lambda: ModelStore().serving(serve_app.ServeSettings(
                checkpoint=str(path), models_dir=str(tmp_path / "models")), None),  # what a replica runs
            "Trainer resume": lambda: Trainer(TrainConfig(preset="tiny", output_dir=str(tmp_path / "run"),
                                                          perceptual_weight=0.0, num_workers=0), resume_from=path),
        }
        for loader, load in loaders.items():
            with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*could run code"):
                load()
            assert not marker.exists(), f"{loader} ran code from the {name} checkpoint"


def test_no_source_loads_pickles_unsafely():
    unsafe = {
        "weights_only set to False": re.compile(r"weights_only\s*=\s*" + "False"),  # split: this file is scanned too
        "pickle.load": re.compile(r"\bpickle\.loads?\("),
        "allow_pickle=True in library code": re.compile(r"allow_pickle\s*=\s*True"),
    }
    hits = []
    for path in repo_files():
        if path.suffix in (".md", ".txt"):
            continue  # prose may name what the code never does
        text = path.read_text(errors="replace")
        for name, pattern in unsafe.items():
            if name.endswith("library code") and "tests" in path.relative_to(ROOT).parts:
                continue  # tests build pickled .npy uploads on purpose
            if name == "pickle.load" and path.suffix != ".py":
                continue
            hits += [f"{path.relative_to(ROOT)}: {name}" for _ in pattern.finditer(text)]
    assert not hits, hits


# --- binding -----------------------------------------------------------------------------------------------
def test_servers_bind_to_loopback_by_default(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    from ray.serve.config import HTTPOptions

    assert HTTPOptions().host == "127.0.0.1"  # Serve's own default, for `serve run serve.app:build_app`
    assert serve_main.build_parser().parse_args(["--checkpoint", "x"]).host == "127.0.0.1"

    # `python -m serve` end to end with Ray and Serve stubbed out: what would it bind?
    import ray

    calls = {}
    checkpoint = tmp_path / "latest.pth"
    checkpoint.write_bytes(b"not loaded by main itself")
    monkeypatch.setattr(ray, "init", lambda **kw: calls.setdefault("ray.init", kw) and SimpleNamespace(dashboard_url=None))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # a Ray of the test session is not the program's
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray.serve, "start", lambda **kw: calls.setdefault("serve.start", kw))
    monkeypatch.setattr(ray.serve, "run", lambda app, **kw: calls.setdefault("serve.run", app))
    monkeypatch.setattr(ray.serve, "shutdown", lambda: None)
    def interrupt(seconds):
        raise KeyboardInterrupt  # Ctrl-C while it waits

    monkeypatch.setattr(serve_main, "time", SimpleNamespace(sleep=interrupt))  # not the global time.sleep
    monkeypatch.delenv(serve_settings.API_KEY_ENV, raising=False)
    serve_main.main(["--checkpoint", str(checkpoint)])
    assert calls["ray.init"]["dashboard_host"] == "127.0.0.1"
    assert calls["serve.start"]["http_options"]["host"] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err

    calls.clear()  # binding elsewhere is explicit, and without an API key it warns
    serve_main.main(["--checkpoint", str(checkpoint), "--host", "0.0.0.0"])
    assert calls["serve.start"]["http_options"]["host"] == "0.0.0.0"
    err = capsys.readouterr().err
    assert "without an API key" in err and "--allowed-hosts" in err  # and it answers loopback names only

    calls.clear()  # the host names a keyless server answers to reach the app's user_config
    serve_main.main(["--checkpoint", str(checkpoint), "--host", "0.0.0.0", "--allowed-hosts", "box.lan"])
    assert calls["serve.run"]._bound_deployment.user_config["allowed_hosts"] == ["box.lan"]
    assert "--allowed-hosts" not in capsys.readouterr().err

    from tune import search

    calls.clear()
    search.start_ray(search.parse_args([]))
    assert calls["ray.init"]["dashboard_host"] == "127.0.0.1"


# --- Ray dashboard ------------------------------------------------------------------------------------------------
def test_nothing_turns_ray_token_auth_off_or_exposes_the_dashboard():
    disabling = [
        re.compile(r"RAY_AUTH_MODE\W{0,8}(disabled|none|off)", re.I),
        re.compile(r"auth_mode\W{0,8}(disabled|none|off)", re.I),
        re.compile(r"dashboard[_-]host\W{0,4}0\.0\.0\.0"),
    ]
    hits = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in repo_files()
            for pattern in disabling for m in pattern.finditer(path.read_text(errors="replace"))]
    assert not hits, hits
    readme = (ROOT / "README.md").read_text()
    assert "ssh -L 8265:127.0.0.1:8265" in readme and "~/.ray/auth_token" in readme
    assert "TLS" in readme  # how to expose it behind a reverse proxy


# --- the API key ---------------------------------------------------------------------------------------------------
def test_api_keys_come_from_file_or_environment(tmp_path, monkeypatch):
    settings, load = serve_settings.ServeSettings, serve_settings.load_api_keys
    monkeypatch.delenv(serve_settings.API_KEY_ENV, raising=False)
    assert load(settings()) == []  # no key: open, for local use
    monkeypatch.setenv(serve_settings.API_KEY_ENV, " from-env \n")
    assert load(settings()) == ["from-env"]
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n\n  second-key \n")
    assert load(settings(api_key_file=str(key_file))) == ["from-file", "second-key"]  # the file wins
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load(settings(api_key_file=str(key_file)))
    with pytest.raises(ValueError, match="cannot read api_key_file"):
        load(settings(api_key_file=str(tmp_path / "missing")))


def test_api_key_is_compared_in_constant_time(monkeypatch):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(serve_settings.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    owner = serve_settings.authorized_owner
    assert owner("Bearer k3y", ["k3y"]) == owner("bearer  k3y ", ["k3y"]) == serve_settings.key_owner("k3y")
    assert compared == [(b"k3y", b"k3y"), (b"k3y", b"k3y")]
    for header in (None, "", "k3y", "Basic k3y", "Bearer k3", "Bearer k3yy", "Bearer ключ"):
        assert owner(header, ["k3y"]) is None, header
    assert owner(None, []) == ""  # no key configured: everyone is the one anonymous owner
    assert owner("Bearer two", ["one", "two"]) == serve_settings.key_owner("two") != serve_settings.key_owner("one")


def test_a_500_answers_with_an_error_id_and_logs_the_exception(caplog):
    """An unexpected exception: the client gets an id, the replica's log the text and the id.
    A frame over the memory budget is a 503 out_of_memory."""
    secret = "/srv/secret-data/train_clip.mp4"
    app = FastAPI()
    _install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError(f"cannot open {secret}")

    @app.get("/too-large")
    async def too_large():
        raise MemoryBudgetError("memory budget 600 MiB is too small for 1 window(s) of 1280x720 LR pixels")

    client = TestClient(app, raise_server_exceptions=False)
    over_budget = client.get("/too-large")  # a frame that cannot fit the memory budget
    assert over_budget.status_code == 503 and over_budget.json()["error"] == "out_of_memory"
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        response = client.get("/boom")
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert secret not in response.text and "RuntimeError" not in response.text
    error_id = response.json()["detail"].split("id ")[1].split(";")[0]
    assert len(error_id) == 12
    logged = "\n".join(record.getMessage() + str(record.exc_info and record.exc_info[1]) for record in caplog.records)
    assert error_id in logged and secret in logged
