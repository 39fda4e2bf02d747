"""`autodeploy serve`: loopback by default, the key and limits reach the app, bad options are one line."""

from __future__ import annotations

import uvicorn
from fastapi.testclient import TestClient

from autodeploy.cli.main import main


def test_serve_binds_loopback_and_passes_settings(tiny_chat_dir, monkeypatch):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port))
    rc = main(["serve", str(tiny_chat_dir), "--api-key", "sk-cli", "--max-tokens-limit", "32", "--max-body-mb", "0.01",
               "--served-model-name", "tiny-cli", "--set", "runtime.max_seq_len=128"])
    assert rc == 0 and seen["host"] == "127.0.0.1" and seen["port"] == 8000
    with TestClient(seen["app"]) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").status_code == 401
        auth = {"Authorization": "Bearer sk-cli"}
        assert c.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny-cli"
        r = c.post("/v1/completions", headers=auth, json={"model": "tiny-cli", "prompt": "hi", "max_tokens": 33})
        assert r.status_code == 400 and "limit of 32" in r.json()["error"]["message"]
        r = c.post("/v1/completions", headers=auth, json={"model": "tiny-cli", "prompt": "x" * 20_000})
        assert r.status_code == 413


def test_serve_rejects_bad_options(tiny_chat_dir, capsys):
    assert main(["serve", str(tiny_chat_dir), "--reasoning", "maybe"]) == 1
    assert "--reasoning 'maybe'" in capsys.readouterr().err
