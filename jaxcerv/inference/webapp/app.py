"""The web page behind `jaxcerv serve`: upload photographs, get predict's JSON line for each.

Every number comes from ``served.predict_images``, the function ``jaxcerv predict`` runs, with
``save_weights`` on: the same decoding, resizing, forward pass, threshold and weight grid. The page
adds only what a browser needs to draw it: a display copy of the photograph (oriented, long side
at most 1024 px), the weight grid as numbers, the ``.npy`` and the heatmap figure as downloads.

Uploads are checked before they reach the model (size, megapixels from the header, how many at
once); a refused upload gets a 4xx answer with one line per file saying why, and the server
keeps serving. Upload names are shown, never used as paths: the bytes are scored from a private
temporary folder that is deleted when the request ends, unless ``keep`` names a folder to keep
them (with their heatmaps, weights and a ``predictions.jsonl``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jaxcerv.inference import served

STATIC = os.path.join(os.path.dirname(__file__), "static")
DISPLAY_SIDE = 1024  # long side of the photograph the page shows


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may upload; over a limit is a 4xx answer naming the limit."""

    max_file_mb: float = 25.0
    max_megapixels: float = 50.0
    max_files: int = 32
    max_upload_mb: float = 200.0  # one request, all files: it is held in memory

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1e6)

    @property
    def max_request_bytes(self) -> int:  # the files plus room for the multipart framing
        files = min(self.max_files * self.max_file_bytes, int(self.max_upload_mb * 1e6))
        return files + 64 * 1024


class Scorer:
    """A loaded model and predict's call on it: ``forward`` and ``card`` as in
    ``served.predict_images``. One request scores at a time (the model is not re-entrant and a
    CPU has no spare cores for a second forward pass)."""

    def __init__(self, forward: served.Forward, card: dict[str, Any], batch_size: int) -> None:
        self.forward, self.card, self.batch_size = forward, card, batch_size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, *, workdir: str | None = None, model: str | None = None) -> Scorer:
        """A run folder's selected checkpoint (``predict.Predictor``) or an exported model
        (``served.ServedModel``, jax and numpy only)."""
        if (workdir is None) == (model is None):
            raise ValueError("pass exactly one of --workdir and --model")
        if model is not None:
            m = served.ServedModel(model)
            return cls(m.predict_arrays, m.meta, 8)
        from jaxcerv.inference.predict import Predictor

        p = Predictor.from_run(workdir)
        return cls(p.predict_arrays, p.card, p.batch_size)

    def predict(
        self, paths: list[str], out_dir: str, titles: list[str], figures: bool
    ) -> list[dict[str, Any]]:
        with self._lock:
            return served.predict_images(
                self.forward, self.card, paths, out_dir, batch_size=self.batch_size,
                save_weights=True, figures=figures, titles=titles,
                warn=io.StringIO(),  # the page shows the warning instead
            )


def display_name(filename: str | None, k: int) -> str:
    """What the page calls an upload: the browser's name without any folder, printable, at most
    120 characters (``photograph K`` when there is none). Shown only, never a path."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:120]
    return name or f"photograph {k + 1}"


def download_stem(name: str) -> str:
    """A file-name-safe stem for the downloads: ``<stem>.weights.npy``, ``<stem>.heatmap.png``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(name)[0]).strip("._")
    return stem or "photograph"


def check_upload(name: str, data: bytes, limits: Limits) -> str | None:
    """Why an upload is refused before decoding (size, megapixels from the header), or None.
    Undecodable files pass here and get read_image's own message."""
    if not data:
        return f"{name}: the file is empty"
    if len(data) > limits.max_file_bytes:
        return (f"{name}: {len(data) / 1e6:.1f} MB, over the limit of {limits.max_file_mb:g} MB "
                "per photograph")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        return (f"{name}: over the limit of {limits.max_megapixels:g} megapixels (refused as a "
                "possible decompression bomb)")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    if width * height > limits.max_megapixels * 1e6:
        return (f"{name}: {width}x{height} px is {width * height / 1e6:.3g} megapixels, over the "
                f"limit of {limits.max_megapixels:g}")
    return None


def display_photo(data: bytes) -> str:
    """The photograph as the page shows it: EXIF-oriented (as ``read_image`` orients it), long
    side at most ``DISPLAY_SIDE``, JPEG as a data URL."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":  # let libjpeg decode at a reduced scale
            im.draft("RGB", (DISPLAY_SIDE, DISPLAY_SIDE))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA", "P"):  # transparent areas on black, as read_image does
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size)
            im.paste(rgba, mask=rgba.getchannel("A"))
        im = im.convert("RGB")
        im.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def score_uploads(
    scorer: Scorer,
    uploads: list[tuple[str, bytes]],
    limits: Limits,
    keep: str | None = None,
    figures: bool = False,
) -> list[dict[str, Any]]:
    """One page result per upload, in order: ``{"name", "line", "photo", "weights", "npy"}`` or
    ``{"name", "error"}``. ``line`` is predict's JSON line for the file, with the upload's name as
    ``image`` and the download names as ``heatmap`` and ``weights_file``. ``figures``: also draw
    predict's heatmap figure (``figure``: PNG bytes); it is most of predict's time, so the page
    asks for it only when the figure is downloaded."""
    results: list[dict[str, Any]] = [{"name": name} for name, _ in uploads]
    with tempfile.TemporaryDirectory(prefix="jaxcerv-serve-") as tmp:
        folder = keep or tmp
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        todo: list[int] = []
        paths: list[str] = []
        for k, (name, data) in enumerate(uploads):
            refusal = check_upload(name, data, limits)
            if refusal:
                results[k]["error"] = refusal
                continue
            path = os.path.join(folder, f"upload-{stamp}-{k + 1}")  # never the upload's name
            with open(path, "wb") as f:
                f.write(data)
            todo.append(k)
            paths.append(path)
        titles = [uploads[k][0] for k in todo]
        lines = scorer.predict(paths, folder, titles, figures) if paths else []
        for k, path, line in zip(todo, paths, lines, strict=True):
            name, data = uploads[k]
            if "error" in line:  # read_image's message names our path: say the upload's name
                results[k]["error"] = line["error"].replace(path, name)
                continue
            stem = download_stem(name)
            page_line = {**line, "image": name, "heatmap": f"{stem}.heatmap.png"}
            if line["weights_file"] is not None:
                page_line["weights_file"] = f"{stem}.weights.npy"
            npy = _read(line["weights_file"]) if line["weights_file"] else None
            results[k].update(
                line=page_line,
                photo=display_photo(data),
                weights=np.load(io.BytesIO(npy)).tolist() if npy else None,
                npy=base64.b64encode(npy).decode() if npy else None,
            )
            if figures:
                results[k]["figure"] = _read(line["heatmap"])
            if keep:
                with open(os.path.join(keep, "predictions.jsonl"), "a") as f:
                    f.write(json.dumps({**line, "upload_name": name}) + "\n")
    return results


def model_info(card: dict[str, Any], limits: Limits, cmap: str = "jet") -> dict[str, Any]:
    """What the page shows about the model, and what it needs to draw: threshold, provenance,
    the synthetic-only warning, the upload limits and the colour map (256 RGB entries)."""
    from jaxcerv.reporting import viz

    lut = np.round(viz.colormap(cmap)(np.linspace(0, 1, 256))[:, :3] * 255).astype(int)
    test = card.get("test_metrics") or {}
    return {
        "threshold": float(card["threshold"]),
        "model": served.provenance(card),
        "test_metrics": test,
        "best_epoch": card.get("best_epoch"),
        "grid_size": card.get("grid_size"),
        "image_size": card["image_size"],
        "resize": card["resize"],
        "warning": served.SYNTHETIC_WARNING if card.get("trained_on_synthetic_data") else "",
        "classes": list(served.CLASS_NAMES),
        "limits": dataclasses.asdict(limits),
        "colormap": lut.tolist(),
    }


async def _limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, _too_big(int(declared), limit))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, _too_big(len(body), limit))
    return bytes(body)


def _too_big(size: int, limit: int) -> str:
    return (f"the upload is over {limit / 1e6:.0f} MB ({size / 1e6:.1f} MB so far): send fewer "
            "or smaller photographs at once")


async def _uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """The ``photo`` files of a multipart request, held in memory (never spooled to disk)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the photographs as multipart/form-data, field 'photo'")
    body = await _limited_body(request, limits.max_request_bytes)

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=limits.max_files + 1,
                             max_fields=16, max_part_size=64 * 1024)
    parser.spool_max_size = len(body) + 1  # keep every file part in memory
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise HTTPException(413, _too_many(limits)) from None
        raise HTTPException(400, f"unreadable upload: {e.message}") from None
    files = [f for f in form.getlist("photo") if not isinstance(f, str)]
    if len(files) > limits.max_files:
        raise HTTPException(413, _too_many(limits))
    if not files:
        raise HTTPException(400, "no photograph in the upload (form field 'photo')")
    return [(display_name(f.filename, k), await f.read()) for k, f in enumerate(files)]


def _too_many(limits: Limits) -> str:
    return f"too many photographs at once: at most {limits.max_files} per upload"


def create_app(
    scorer: Scorer,
    limits: Limits = Limits(),
    *,
    keep: str | None = None,
    demo: Sequence[str] = (),
) -> Starlette:
    """The application. ``keep``: a folder that keeps every upload and its outputs. ``demo``:
    photographs the page uploads itself when opened as ``/?demo`` (the browser test, the docs
    screenshot); without them there is no ``/demo-photo/K``."""
    if keep is not None and not os.path.isdir(keep):
        raise ValueError(f"--keep {keep}: not a folder")
    info = model_info(scorer.card, limits)
    info["demo"] = [os.path.basename(p) for p in demo]
    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"))

    async def model(request: Request) -> Response:
        return JSONResponse(info)

    async def predict(request: Request) -> Response:
        uploads = await _uploads(request, limits)
        results = await run_in_threadpool(score_uploads, scorer, uploads, limits, keep)
        ok = all("error" not in r for r in results)
        return JSONResponse({"results": results}, status_code=200 if ok else 422)

    async def figure(request: Request) -> Response:
        uploads = await _uploads(request, limits)
        if len(uploads) != 1:
            raise HTTPException(400, "one photograph per heatmap figure")
        (r,) = await run_in_threadpool(score_uploads, scorer, uploads, limits, None, True)
        if "error" in r:
            raise HTTPException(422, r["error"])
        name = r["line"]["heatmap"]
        return Response(r["figure"], media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def demo_photo(request: Request) -> Response:
        k = request.path_params["k"]
        if k >= len(demo):
            raise HTTPException(404, "no such demo photograph")
        return FileResponse(demo[k])

    async def error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/api/model", model),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/figure", figure, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    if demo:
        routes.append(Route("/demo-photo/{k:int}", demo_photo))
    return Starlette(routes=routes, exception_handlers={HTTPException: error})


@contextlib.contextmanager
def running(app: Starlette, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a thread on a free port of ``host`` (loopback by default) and yield
    its URL; for tests, the docs screenshot and benchmarks/serve_latency.py."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def serve(
    *,
    workdir: str | None = None,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    keep: str | None = None,
    limits: Limits = Limits(),
) -> None:
    """Load the model, bind the port (in use: one line), say where the page is, and serve
    until Ctrl-C."""
    import uvicorn

    app = create_app(Scorer.load(workdir=workdir, model=model), limits, keep=keep)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror}): try another --port") \
            from None
    shown = f"[{host}]" if ":" in host else host
    print(f"jaxcerv serve: open http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
