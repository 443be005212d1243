"""`jaxcerv serve`: it serves the page on loopback from an export, and says in one line what is
wrong with its flags or its port."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install '.[serve]'")


def _serve(*args):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, "-m", "jaxcerv.cli.app", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_answers_on_loopback_and_refuses_a_taken_port(smoke_workdir, tmp_path):
    from jaxcerv.inference import export

    model = str(tmp_path / "model.jaxexport")
    export.export_run(smoke_workdir, model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve(f"--model={model}", f"--port={port}")
        _, err = busy.communicate(timeout=300)
        assert busy.returncode == 2
        assert err.strip().splitlines()[-1] == (f"error: cannot listen on 127.0.0.1:{port} "
                                                "(Address already in use): try another --port")
    server = _serve(f"--model={model}", f"--port={port}")
    try:
        assert server.stdout.readline().strip() == (
            f"jaxcerv serve: open http://127.0.0.1:{port}/ (Ctrl-C stops)")
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/api/model")
                info = json.loads(conn.getresponse().read())
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert info["model"]["dataset"] == "synthetic_cervix"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_needs_exactly_one_model(tmp_path):
    for args in ((), ("--model=a", "--workdir=b")):
        out = _serve(*args)
        _, err = out.communicate(timeout=120)
        assert out.returncode == 1 and "pass exactly one of --model" in err
    out = _serve(f"--workdir={tmp_path}")
    _, err = out.communicate(timeout=120)
    assert out.returncode == 2 and err.startswith(f"error: {tmp_path}: no config.json")
