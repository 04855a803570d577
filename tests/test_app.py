"""The web app's endpoints, on tiny checkpoints, through FastAPI's TestClient (no network, no browser)."""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bridgeseg.app import AppLimits, create_app
from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.data.mosaic import render_val_mosaics
from bridgeseg.models import create_model
from bridgeseg.predictor import Predictor
from bridgeseg.vocabulary import MAX_CLASSES

CLASSES = ["sky", "grass", "cat"]


def make_tiny_checkpoint(directory: Path, method: str = "bridge", classes: list[str] = CLASSES) -> Path:
    """A tiny checkpoint; random class embeddings, so only new class names load the text encoder."""
    torch.manual_seed(0)
    embeddings = None
    if method != "fpn":
        embeddings = torch.nn.functional.normalize(torch.randn(len(classes), 384), dim=-1)
    model = create_model(
        method,
        backbone="test_resnet",
        classes=classes,
        fusion_dim=32,
        decoder_channels=16,
        class_embeddings=embeddings,
    )
    return save_checkpoint(model, directory)


def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that claims a size it does not hold: PIL reads the size from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_checkpoint(make_tiny_checkpoint(tmp_path_factory.mktemp("bridge") / "model"))


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, checkpoint="tiny")) as test_client:
        yield test_client


def upload(client: TestClient, image: bytes, name: str = "image.png", **fields: str) -> httpx.Response:
    return client.post("/api/segment", files={"image": (name, image, "image/png")}, data=fields)


def test_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for element_id in ("image-file", "example", "classes", "mode", "segment", "overlay", "legend", "areas"):
        assert f'id="{element_id}"' in page.text
    # Nothing from elsewhere: no absolute URLs in the page or its script, and the browser is told so.
    script = client.get("/app.js")
    style = client.get("/app.css")
    assert script.status_code == style.status_code == 200
    for text in (page.text, script.text, style.text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # FastAPI's Swagger page would load scripts from a CDN.
    assert client.get("/docs").status_code == 404


def test_info_and_examples(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["classes"] == CLASSES
    assert info["open_vocabulary"] is True
    assert info["method"] == "bridge"
    assert info["limits"]["max_upload_bytes"] == AppLimits().max_upload_bytes
    examples = client.get("/api/examples").json()["examples"]
    # Held-out mosaics (where the demo model means something), then the open-vocabulary photo; each says so.
    names = [example["name"] for example in examples]
    assert names == ["mosaic-val-1", "mosaic-val-2", "mosaic-val-3", "mosaic-val-4", "photo-cat"]
    assert all("held-out mosaic" in example["label"] and example["classes"] is None for example in examples[:4])
    assert "open vocabulary" in examples[4]["label"] and examples[4]["classes"] == ["cat", "dog", "wall", "floor"]
    mosaic = client.get("/api/examples/mosaic-val-3")
    assert mosaic.status_code == 200 and mosaic.headers["content-type"] == "image/png"
    expected, _ = render_val_mosaics(3)[2]  # the demo data's val_00002.png
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mosaic.content))), expected)
    photo = client.get("/api/examples/photo-cat")
    assert photo.status_code == 200 and Image.open(io.BytesIO(photo.content)).size == (451, 300)
    missing = client.get("/api/examples/unicorn")
    assert missing.status_code == 404 and "valid examples" in missing.json()["error"]


def test_segment_uploaded_png(client: TestClient) -> None:
    response = upload(client, png_bytes(48, 40), classes="sky, grass, cat")
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (48, 40)
    assert result["classes"] == CLASSES
    assert [area["name"] for area in result["areas"]] == sorted(
        CLASSES, key=lambda name: -next(a["fraction"] for a in result["areas"] if a["name"] == name)
    )
    assert sum(area["fraction"] for area in result["areas"]) == pytest.approx(1.0)
    assert all(area["color"].startswith("#") and len(area["color"]) == 7 for area in result["areas"])
    assert result["latency_ms"] >= 0 and result["total_ms"] >= result["latency_ms"]
    assert (result["runtime"], result["precision"]) == ("torch", "fp32")  # fp32 unless asked, on every CPU
    prefix = "data:image/png;base64,"
    assert result["overlay"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay"][len(prefix) :])))
    assert overlay.size == (48, 40)


def test_segment_example_photo_sliding_window(client: TestClient) -> None:
    response = client.post("/api/segment", data={"example": "mosaic-val-1", "mode": "slide", "tta": "true"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (192, 192)
    assert result["mode"] == "slide" and result["tta"] is True
    assert result["classes"] == CLASSES  # no class field: the model's classes


def test_open_vocabulary_classes(client: TestClient) -> None:
    # New names go through the text encoder (the offline MiniLM).
    response = upload(client, png_bytes(), classes="dog, wall,  floor ")
    assert response.status_code == 200, response.text
    assert response.json()["classes"] == ["dog", "wall", "floor"]


def test_closed_set_model_refuses_other_classes(tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(make_tiny_checkpoint(tmp_path / "fpn", method="fpn"))
    with TestClient(create_app(predictor)) as fpn_client:
        assert fpn_client.get("/api/info").json()["open_vocabulary"] is False
        assert upload(fpn_client, png_bytes(), classes="sky, grass, cat").status_code == 200
        response = upload(fpn_client, png_bytes(), classes="sky, dog")
    assert response.status_code == 400
    assert "closed-set" in response.json()["error"]


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ("", "class list is empty"),
        ("   ", "class list is empty"),
        ("sky,,cat", "class name 2 of 3 is blank"),
        ("sky, cat,", "is blank"),
        ("cat, sky, cat", "duplicate class names ['cat']"),
        (",".join(f"class {i}" for i in range(MAX_CLASSES + 1)), f"over the {MAX_CLASSES} accepted in one list"),
        ("x" * 101, "is 101 characters long, over the 100 accepted"),
    ],
)
def test_bad_class_lists(client: TestClient, classes: str, message: str) -> None:
    response = upload(client, png_bytes(), classes=classes)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_not_an_image(client: TestClient) -> None:
    response = upload(client, b"%PDF-1.7 definitely not a picture", name="notes.pdf")
    assert response.status_code == 400
    assert "not an image" in response.json()["error"]
    truncated = upload(client, png_bytes(64, 64)[:200])
    assert truncated.status_code == 400
    assert "could not be decoded" in truncated.json()["error"]
    assert upload(client, b"").status_code == 400


def test_decompression_bomb_is_refused(client: TestClient) -> None:
    # 40000 × 40000 = 1.6 G pixels in 70 bytes; PIL's limit stays in force.
    response = upload(client, header_only_png(40000, 40000))
    assert response.status_code == 400
    assert "decompression bomb" in response.json()["error"]
    # Over PIL's warning threshold but under its error threshold: refused as well.
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    with pytest.warns(Image.DecompressionBombWarning):
        response = upload(client, header_only_png(side, side))
    assert response.status_code == 400
    assert "decompression bomb" in response.json()["error"]


def test_pixel_limit(predictor: Predictor) -> None:
    with TestClient(create_app(predictor, AppLimits(max_pixels=1000))) as small_client:
        response = upload(small_client, png_bytes(48, 40))
    assert response.status_code == 400
    # Counted as the model processes the image: padded to multiples of 32.
    assert "48×40 pixels and the model processes it as 64×64 = 4096 pixels" in response.json()["error"]


def test_oversize_upload(predictor: Predictor) -> None:
    limits = AppLimits(max_upload_bytes=100_000)
    with TestClient(create_app(predictor, limits)) as small_client:
        response = upload(small_client, b"\0" * 200_000)
        assert response.status_code == 413
        assert "larger than" in response.json()["error"]

        # A chunked body announces no length: it is cut off while streaming.
        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b"\0" * 10_000

        streamed = small_client.post(
            "/api/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert streamed.status_code == 413


def test_large_upload_stays_in_memory(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads over the form parser's default in-memory size (1 MiB) must still not touch the disk."""

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("the app wrote a temporary file")

    for name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    image = png_bytes(700, 700)
    assert len(image) > 1024 * 1024
    response = upload(client, image)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "no image"),
        ({"example": "unicorn"}, "unknown example"),
        ({"example": "photo-cat", "mode": "tiles"}, "unknown mode"),
    ],
)
def test_bad_requests(client: TestClient, fields: dict[str, str], message: str) -> None:
    response = client.post("/api/segment", data=fields)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_image_and_example_together(client: TestClient) -> None:
    response = upload(client, png_bytes(), example="photo-cat")
    assert response.status_code == 400
    assert "not both" in response.json()["error"]


class SlowPredictor:
    """A predictor whose `predict` sets `started`, then holds the model until `release` is set."""

    def __init__(self, predictor: Predictor) -> None:
        self.method, self.classes, self.open_vocabulary = predictor.method, predictor.classes, predictor.open_vocabulary
        self.size_multiple, self.runtime = predictor.size_multiple, predictor.runtime
        self.precision, self.check_cost = predictor.precision, predictor.check_cost
        self._predict = predictor.predict
        self.started, self.release = threading.Event(), threading.Event()

    def predict(self, *args: object, **kwargs: object) -> object:
        self.started.set()
        assert self.release.wait(timeout=30)
        return self._predict(*args, **kwargs)


def test_busy_model_turns_requests_away(predictor: Predictor) -> None:
    """One request holds the model; with no waiting room the next one gets 503 at once."""
    slow = SlowPredictor(predictor)
    started, release = slow.started, slow.release
    results: dict[str, int] = {}
    with TestClient(create_app(slow, AppLimits(max_waiting=0))) as busy_client:

        def first_request() -> None:
            results["first"] = upload(busy_client, png_bytes()).status_code

        first = threading.Thread(target=first_request)
        first.start()
        try:
            assert started.wait(timeout=30)
            second = upload(busy_client, png_bytes())
            assert second.status_code == 503
            assert "busy" in second.json()["error"]
        finally:
            release.set()
            first.join(timeout=30)
        assert results["first"] == 200
        # The model is free again.
        assert upload(busy_client, png_bytes()).status_code == 200


def test_wait_timeout(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor)
    started, release = slow.started, slow.release
    with TestClient(create_app(slow, AppLimits(max_waiting=1, wait_timeout_s=0.2))) as busy_client:
        first = threading.Thread(target=lambda: upload(busy_client, png_bytes()))
        first.start()
        try:
            assert started.wait(timeout=30)
            second = upload(busy_client, png_bytes())
        finally:
            release.set()
            first.join(timeout=30)
    assert second.status_code == 503
    assert "stayed busy" in second.json()["error"]


def test_only_loopback_host_names_when_asked(predictor: Predictor) -> None:
    """A loopback server answers only to loopback names (DNS rebinding)."""
    app = create_app(predictor, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:7860") as local:
        assert local.get("/api/info").status_code == 200
    with TestClient(app, base_url="http://attacker.example") as remote:
        assert remote.get("/api/info").status_code == 400


def test_serve_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-model"
    assert main(["serve", "--checkpoint", str(missing)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(missing) in error and "bridgeseg demo" in error and "--checkpoint" in error


def test_serve_without_app_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    assert main(["serve"]) == 2
    assert "pip install 'bridgeseg[app]'" in capsys.readouterr().err


def test_unreadable_class_lists_get_a_400_not_a_500(client: TestClient) -> None:
    huge = "x" * (200 * 1024)  # over the CSV reader's 128 KB field limit
    for response in (
        upload(client, png_bytes(), classes='"salt, pepper, cat'),
        client.post("/api/segment", data={"example": "mosaic-val-1", "classes": huge}),  # urlencoded: no field cap
    ):
        assert response.status_code == 400, response.text
    assert "double quote that is never closed" in upload(client, png_bytes(), classes='"salt, cat').json()["error"]
    error = client.post("/api/segment", data={"example": "mosaic-val-1", "classes": huge}).json()["error"]
    assert error.startswith("a class name is over 131072 characters long; give names of at most 100")


def test_not_an_image_reads_well_with_and_without_a_format_list() -> None:
    from bridgeseg.errors import ImageError
    from bridgeseg.images import decode_bytes

    with pytest.raises(ImageError, match=r"^not an image: upload an image file$"):
        decode_bytes(b"plain text")
    with pytest.raises(ImageError, match=r"^not an image: upload a PNG, JPEG file$"):
        decode_bytes(b"plain text", ("PNG", "JPEG"))


def test_the_curl_examples_in_the_docs_work(client: TestClient, tmp_path: Path, monkeypatch) -> None:
    import shlex

    monkeypatch.chdir(tmp_path)
    (tmp_path / "street.jpg").write_bytes(png_bytes(64, 48))  # any accepted format under the name the doc uses
    docs = (Path(__file__).resolve().parents[1] / "docs" / "app.md").read_text()
    commands = [line.split("  #")[0] for line in docs.splitlines() if line.startswith("curl ")]
    assert len(commands) >= 3
    for command in commands:
        words = shlex.split(command)[1:]
        data, files = {}, {}
        for flag, value in zip(words[:-1:2], words[1:-1:2], strict=True):
            name, _, content = value.partition("=")
            if flag == "-F" and content.startswith("@"):
                files[name] = (content[1:], Path(content[1:]).read_bytes(), "image/jpeg")
            elif flag == "-F":
                files[name] = (None, content)
            else:
                assert flag in ("-d", "--data-urlencode"), flag
                data[name] = content
        assert words[-1] == "http://127.0.0.1:7860/api/segment"
        response = client.post("/api/segment", data=data or None, files=files or None)
        assert response.status_code == 200, (command, response.text)


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_serve_refuses_a_port_out_of_range(port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--checkpoint", str(tmp_path / "no-model"), "--port", port]) == 2
    assert capsys.readouterr().err == (
        f"error: --port {port} is not a TCP port; give one from 1 to 65535, e.g. --port 7860\n"
    )


def test_serve_stops_on_ctrl_c_with_a_short_grace_period_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    from bridgeseg.cli import serve

    checkpoint = make_tiny_checkpoint(tmp_path / "model")
    options: dict = {}

    def interrupted(app: object, **kwargs: object) -> None:
        options.update(kwargs)
        raise KeyboardInterrupt  # what uvicorn does after its own shutdown on SIGINT

    monkeypatch.setattr(uvicorn, "run", interrupted)
    monkeypatch.setattr(serve, "_check_port_free", lambda host, port: None)
    caplog.set_level("INFO", logger="bridgeseg.cli.serve")
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 0
    assert options["timeout_graceful_shutdown"] == serve.GRACEFUL_SHUTDOWN_S <= 2
    assert caplog.records[-1].getMessage() == f"stopped serving {checkpoint}"
