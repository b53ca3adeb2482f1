"""mgd-rt app: the HTTP API through FastAPI's test client and a real uvicorn process, and the page in a
real browser (Debian's Chromium driven by Playwright). Every answer is checked against the local
Segmenter's result for the same photo."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the app extra is not installed: pip install 'mgd-rt[app]'")
from fastapi.testclient import TestClient  # noqa: E402

from mgd_rt.app.server import create_app  # noqa: E402
from mgd_rt.app.settings import TOKEN_ENV, AppSettings  # noqa: E402
from mgd_rt.runtime.samples import sample_photo  # noqa: E402
from mgd_rt.runtime.segmenter import Segmenter  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "s3cret-token"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def graph(tiny_onnx_copy) -> Path:
    return tiny_onnx_copy(256)


@pytest.fixture(scope="module")
def segmenter(graph):
    with Segmenter(graph, batch_size=4) as seg:
        yield seg


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Eight different photos (crops of two scikit-image photos): the answer cache never merges them."""
    chelsea, astronaut = sample_photo("chelsea"), sample_photo("astronaut")
    return [chelsea, astronaut] + [astronaut[k * 40 : 300 + k * 20, k * 30 : 360] for k in range(6)]


@pytest.fixture(scope="module")
def local(segmenter, photos) -> list[np.ndarray]:
    """The local Segmenter's mattes, one model call per photo."""
    return [next(segmenter.stream([p])).matte() for p in photos]


@pytest.fixture(scope="module")
def client(segmenter):
    with TestClient(create_app(segmenter, AppSettings(max_batch=4, max_bytes=2_000_000))) as c:
        yield c


def close(matte: np.ndarray, reference: np.ndarray) -> None:
    assert matte.shape == reference.shape
    assert np.abs(matte.astype(int) - reference).max() <= 1  # batching may move a value by one step


def test_every_format_is_the_runtimes(client, segmenter, photos, local):
    from mgd_rt.runtime.compose import Cutout
    from mgd_rt.runtime.outputs import FORMATS, write_result_stream

    result = next(segmenter.stream([photos[0]]))
    height, width = photos[0].shape[:2]
    for fmt in FORMATS:
        query = f"format={fmt}&threshold=0.4" + ("&background=00ff00" if fmt == "background" else "")
        r = client.post(f"/v1/segment?{query}", content=png(photos[0]), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == ("image/jpeg" if FORMATS[fmt] == ".jpg" else "image/png")
        assert decode(r.content).shape[:2] == (height, width)
        expected = io.BytesIO()
        write_result_stream(result, expected, fmt, 0.4, Cutout(background="#00ff00" if fmt == "background" else None))
        # one request at a time: a batch of one, as locally, so the very same bytes
        assert r.content == expected.getvalue(), fmt
    close(decode(client.post("/v1/segment", content=png(photos[0])).content), local[0])
    # one model run served every format: the rest came from the answer cache
    assert client.get("/v1/health").json()["cache_hits"] >= len(FORMATS)


def test_multipart_and_raw_body_agree(client, photos, local):
    r = client.post("/v1/segment", files={"file": ("cat photo.png", png(photos[1]), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'inline; filename="cat_photo.matte.png"'
    close(decode(r.content), local[1])
    assert "model;dur=" in r.headers["server-timing"] or r.headers["x-mgd-rt-cache"] == "hit"


@pytest.mark.parametrize("query, body, status, says", [
    ("", b"", 422, "empty upload"),
    ("", b"not an image at all", 422, "upload: not an image Pillow can read"),
    ("format=jpeg", None, 422, "format"),
    ("threshold=1.5", None, 422, "threshold"),
    ("format=matte&background=white", None, 422, "background applies to format=background"),
    ("format=background&background=/etc/hosts", None, 422, "give a colour"),
    ("", b"x" * 2_100_000, 413, "larger than the limit of 2000000 bytes"),
])
def test_bad_requests_get_one_clear_answer(client, photos, query, body, status, says):
    r = client.post(f"/v1/segment?{query}", content=png(photos[2]) if body is None else body)
    assert r.status_code == status
    assert says in json.dumps(r.json()["detail"])


def test_truncated_pixels_and_forms_are_refused(client, segmenter, photos):
    data = png(photos[3])
    r = client.post("/v1/segment", content=data[: len(data) // 2])
    assert r.status_code == 422 and r.json()["detail"].startswith("upload: unreadable image, truncated")
    two = [("file", ("a.png", data, "image/png")), ("other", ("b.png", data, "image/png"))]
    r = client.post("/v1/segment", files=two)
    assert r.status_code == 422 and r.json()["detail"] == "send exactly one image file per request (the form has 2)"
    with TestClient(create_app(segmenter, AppSettings(max_pixels=100_000))) as small:
        r = small.post("/v1/segment", files={"file": ("big.png", png(photos[1]), "image/png")})
        assert r.status_code == 413
        assert r.json()["detail"] == "big.png: 512x512 is 0.3 MP, too large to decode safely (the limit is 0.1 MP)"
        r = small.post("/v1/segment", content=png(photos[0][:100, :100]))
        assert r.status_code == 200  # the bad uploads before it changed nothing


def test_token_guards_the_api_not_health(segmenter, photos):
    with TestClient(create_app(segmenter, AppSettings(token=TOKEN))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.post("/v1/segment", content=png(photos[0]), headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/health").status_code == 200
        good = {"Authorization": f"Bearer {TOKEN}"}
        model = c.get("/v1/model", headers=good).json()
        assert (model["variant"], model["image_size"], model["precision"], model["backend"], model["device"]) == (
            "tiny", 256, "fp32", "onnxruntime", "CPUExecutionProvider")
        assert c.post("/v1/segment", content=png(photos[0]), headers=good).status_code == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(graph, photos, local):
    with Segmenter(graph, batch_size=4) as seg, TestClient(create_app(seg, AppSettings(
            max_batch=4, batch_wait_ms=200, cache_bytes=0))) as c:
        bad = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # a PNG signature with nothing behind it, sent among good ones

        def send(k: int):
            return c.post("/v1/segment", content=bad if k == len(photos) else png(photos[k]))

        with ThreadPoolExecutor(len(photos) + 1) as pool:
            answers = list(pool.map(send, range(len(photos) + 1)))
        assert [a.status_code for a in answers] == [200] * len(photos) + [422]
        for answer, reference in zip(answers, local, strict=False):
            close(decode(answer.content), reference)
        health = c.get("/v1/health").json()
        assert health["largest_batch"] > 1 and health["batches"] < len(photos)


def test_a_full_queue_answers_503_with_retry_after(graph, photos, monkeypatch):
    gate = threading.Event()
    with Segmenter(graph) as seg:
        run_exact = seg.backend.run_exact
        monkeypatch.setattr(seg.backend, "run_exact", lambda batch: (gate.wait(30), run_exact(batch))[1])
        settings = AppSettings(max_batch=1, queue_size=1, batch_wait_ms=0, retry_after_s=3)
        with TestClient(create_app(seg, settings)) as c, ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/v1/segment", content=png(photos[0]))  # held in the model
            while c.get("/v1/health").json()["batches"] < 1:
                time.sleep(0.01)
            second = pool.submit(c.post, "/v1/segment", content=png(photos[1]))  # the one queue slot
            while c.get("/v1/health").json()["waiting"] < 1:
                time.sleep(0.01)
            r = c.post("/v1/segment", content=png(photos[2]))
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["detail"].startswith("busy: 1 requests are already waiting for the model")
            gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200


def test_the_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/app.js"' in page.text
    assert client.get("/static/app.css").status_code == 200
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


# a real uvicorn process ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def server(graph):
    """``mgd-rt app`` in its own process, the token from the environment; yields its base URL."""
    port = free_port()
    env = {**os.environ, TOKEN_ENV: TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "mgd_rt.cli", "app", str(graph), "--port", str(port),
                             "--max-batch", "4", "--max-bytes", "3000000"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if call(f"{url}/v1/health")[0] == 200:
                break
        except OSError:
            assert time.monotonic() < deadline, "the app did not answer within 60 s"
            time.sleep(0.2)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_uvicorn_process_answers_like_the_local_segmenter(server, photos, local):
    url, _ = server
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: call(f"{url}/v1/segment", png(p)), photos[:4]))
    for (status, _, body), reference in zip(answers, local, strict=False):
        assert status == 200
        close(decode(body), reference)
    status, headers, body = call(f"{url}/v1/segment?format=rgba", png(photos[0]))
    assert status == 200 and headers["content-type"] == "image/png" and decode(body).shape == (*local[0].shape, 4)
    assert call(f"{url}/v1/segment", png(photos[0]), token=None)[0] == 401
    # refused from the declared length, before a byte of the body is read: the client sends only the
    # headers (sending the body too races the server's close: a broken pipe instead of the answer)
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 3100000\r\nConnection: close\r\n\r\n")
    with socket.create_connection(urllib.parse.urlsplit(url)[1].split(":"), timeout=60) as sock:
        sock.sendall(head.encode())
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"3000000 bytes" in answer
    status, _, body = call(f"{url}/v1/segment", b"GIF89a-not-really")
    assert status == 422 and b"not an image" in body
    assert json.loads(call(f"{url}/v1/model")[2])["variant"] == "tiny"


def test_cli_refuses_bad_settings_in_one_line(graph):
    r = subprocess.run([sys.executable, "-m", "mgd_rt.cli", "app", str(graph), "--max-batch", "0"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip()) == (1, "mgd-rt: error: --max-batch 0: must be at least 1")


# the page in a real browser --------------------------------------------------------------------
def browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright (the dev extra)"
    return None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_page_in_chromium_segments_a_dropped_photo(server, photos, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(png(photos[0]))
    height, width = photos[0].shape[:2]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script(f"sessionStorage.setItem('mgd-rt-token', {json.dumps(TOKEN)})")
        page.goto(url)
        page.wait_for_function("document.querySelector('#model').textContent.startsWith('MGD-SAM2')")
        page.set_input_files("#files", str(photo))
        page.wait_for_selector(".card.done, .card.failed", timeout=60_000)
        assert page.inner_text(".card .error") == "" and page.locator(".card.done").count() == 1
        stats = page.evaluate("""() => {
            const img = document.querySelector('img.matte');
            const canvas = Object.assign(document.createElement('canvas'), {width: img.naturalWidth,
                                                                           height: img.naturalHeight});
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let lo = 255, hi = 0;
            for (let i = 0; i < px.length; i += 4) { lo = Math.min(lo, px[i]); hi = Math.max(hi, px[i]); }
            return {width: img.naturalWidth, height: img.naturalHeight, lo, hi};
        }""")
        assert (stats["width"], stats["height"]) == (width, height)
        assert stats["hi"] - stats["lo"] > 50, stats  # not blank: the matte has object and background
        assert "chelsea.matte.png" == page.get_attribute("a.dl-matte", "download")
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000


def test_process_stops_cleanly_on_sigint(server):
    _, proc = server
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "ok: app stopped" in out
