"""Latency of `jaxcerv serve` per photograph, for 1 and 8 concurrent clients, against `predict`.

    python benchmarks/serve_latency.py --model=/work/runs/serve_bench/model.jaxexport

Starts ``jaxcerv serve --model=EXPORT`` on a free 127.0.0.1 port (loopback only: this script has
no way to aim at another machine), waits for the page's model endpoint, warms the model up with
one upload, then each of C clients (threads) sends ``--requests`` uploads of one photograph each,
back to back; a request's latency is from sending the upload to the last byte of the answer
(predict's JSON line, the display photograph, the weight grid and the heatmap figure). Against:
``jaxcerv predict --model=EXPORT photo.jpg`` as a fresh process per photograph (what a terminal
user waits for: start, load, compile, score) and predict's function in a warm process
(``served.predict_images`` on a loaded model), with and without its heatmap figure (the page
draws the weights itself and asks for the figure only when it is downloaded, so "no figure" is
serve's floor without HTTP). The photograph is a
synthetic colposcopy scene at 1200 x 800 px (JPEG), never a real one. Prints p50/p95 in ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
from PIL import Image

HOST = "127.0.0.1"


def photograph(path: str, seed: int = 0) -> bytes:
    """A synthetic scene (data.synthetic), stretched to a 3:2 photograph of 1200 x 800 px."""
    from jaxcerv.data import synthetic

    image = synthetic.generate(seed, seed=0, grid=10, patch=28)["image"]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).resize((1200, 800), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=90)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def upload(port: int, data: bytes, timeout: float) -> float:
    """One multipart upload of ``data``; seconds to the whole answer (raises on a non-200)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; "
            f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + (
        f"\r\n--{boundary}--\r\n").encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    start = time.perf_counter()
    conn.request("POST", "/api/predict", body,
                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    reply = conn.getresponse()
    answer = reply.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if reply.status != 200:
        raise RuntimeError(f"upload answered {reply.status}: {answer[:200]!r}")
    return elapsed


def wait_for(port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jaxcerv serve exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/api/model")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"jaxcerv serve did not answer on {HOST}:{port} within {timeout:.0f} s")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "n": len(ms)}


def serve_latency(model: str, data: bytes, clients: list[int], requests: int,
                  timeout: float) -> dict[str, dict[str, float]]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jaxcerv.cli.app", "serve", f"--model={model}", f"--host={HOST}",
         f"--port={port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(port, server, timeout)
        upload(port, data, timeout)  # compile the batch-1 forward before timing
        out = {}
        for c in clients:
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                runs = pool.map(lambda _: [upload(port, data, timeout) for _ in range(requests)],
                                range(c))
                out[f"serve, {c} client{'s' if c > 1 else ''}"] = percentiles(
                    [t for run in runs for t in run])
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def predict_latency(model: str, photo: str, out_dir: str, cold: int, warm: int,
                    timeout: float) -> dict[str, dict[str, float]]:
    from jaxcerv.inference import served

    times = []
    for _ in range(cold):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxcerv.cli.app", "predict", f"--model={model}",
                        f"--out={out_dir}", photo], check=True, capture_output=True,
                       timeout=timeout)
        times.append(time.perf_counter() - start)
    loaded = served.ServedModel(model)
    quiet = io.StringIO()

    def once(figures: bool) -> float:
        start = time.perf_counter()
        served.predict_images(loaded.predict_arrays, loaded.meta, [photo], out_dir,
                              save_weights=True, figures=figures, warn=quiet)
        return time.perf_counter() - start

    once(True)  # compile
    return {"predict, a process per photograph": percentiles(times),
            "predict's function, warm": percentiles([once(True) for _ in range(warm)]),
            "predict's function, warm, no figure": percentiles(
                [once(False) for _ in range(warm)])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an export (jaxcerv export)")
    p.add_argument("--clients", default="1,8", help="concurrent clients, comma separated")
    p.add_argument("--requests", type=int, default=12, help="uploads per client (bounded)")
    p.add_argument("--cold", type=int, default=3, help="predict processes to time")
    p.add_argument("--warm", type=int, default=12, help="warm predict calls to time")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request/process")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = p.parse_args()
    if not 1 <= args.requests <= 200:
        p.error("--requests must be in 1..200")
    clients = [int(c) for c in args.clients.split(",")]
    if not all(1 <= c <= 32 for c in clients):
        p.error("--clients must be in 1..32")
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        photo = os.path.join(tmp, "photo.jpg")
        data = photograph(photo)
        result = serve_latency(args.model, data, clients, args.requests, args.timeout)
        result.update(predict_latency(args.model, photo, tmp, args.cold, args.warm, args.timeout))
    if args.json:
        print(json.dumps({"model": args.model, "cpus": os.cpu_count(), "latency": result}))
        return
    print(f"per photograph (1200x800 JPEG), {os.cpu_count()} CPUs, model {args.model}")
    for name, r in result.items():
        print(f"  {name:<36} p50 {r['p50_ms']:8.0f} ms   p95 {r['p95_ms']:8.0f} ms   (n={r['n']})")


if __name__ == "__main__":
    main()
