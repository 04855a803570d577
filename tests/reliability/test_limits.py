"""Hostile inputs to `predict`, the Python API and `serve`: image sizes, outputs that exist, class names.

Each test is one case of issue 14 ("Reliability, round two"): the limits count what the model really processes
(padded to its size multiple, resized), `predict` never replaces a file it did not write, one class-list parser
holds for the CLI, the API and the server, and the server refuses cross-site posts and disconnects quietly. The
last section is issue 21's: one logits budget bounds the classes × pixels of every prediction, large images are
segmented in bounded tiles and bands, and `data mosaic` has bounded sizes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bridgeseg import budget
from bridgeseg.app.forms import read_body
from bridgeseg.app.server import AppLimits, ClientError, create_app
from bridgeseg.budget import MAX_LOGIT_VALUES, check_logits_budget, plan_logits
from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.data.mosaic import MAX_IMAGES, MAX_SIZE
from bridgeseg.errors import ImageError
from bridgeseg.images import MAX_ASPECT_RATIO, MAX_MODEL_PIXELS, SizeLimits, check_size, processed_size
from bridgeseg.models import create_model
from bridgeseg.models import prediction as loop
from bridgeseg.runtime.predictor import Predictor
from bridgeseg.vocabulary import MAX_CLASS_NAME_LENGTH, MAX_CLASSES, parse_class_list

CLASSES = ["salt, pepper", "grass", "cat"]  # a name with a comma: quoted on the command line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bridge checkpoint with stand-in class embeddings: no text encoder is loaded."""
    embeddings = torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
    tiny = {"backbone": "test_resnet", "fusion_dim": 32, "decoder_channels": 16}
    model = create_model("bridge", class_embeddings=embeddings, classes=CLASSES, **tiny)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> TestClient:
    with TestClient(create_app(predictor)) as test_client:
        yield test_client


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: TestClient, data: bytes, headers: dict[str, str] | None = None, **fields: str):
    return client.post("/api/segment", files={"image": ("x.png", data, "image/png")}, data=fields, headers=headers)


def predict(checkpoint: Path, out: Path, *inputs: Path | str, options: tuple[str, ...] = ()) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), *options, *map(str, inputs)])


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------------------------
# 1. Limits that count what the model processes
# ---------------------------------------------------------------------------------------------------------------


def test_the_limits_count_the_padded_and_resized_size_without_allocating_it() -> None:
    limits = SizeLimits()
    # The 300-byte PNG of the report: a 1-pixel-tall strip is 32 pixels tall once padded.
    assert processed_size(1_048_576, 1, limits) == (1_048_576, 32)
    with pytest.raises(ImageError) as strip:
        check_size(1_048_576, 1, limits, "w.png")
    assert str(strip.value) == (
        "w.png: the image is 1048576×1 pixels and the model processes it as 1048576×32, sides in a ratio of "
        f"32768:1, over the {MAX_ASPECT_RATIO:g}:1 accepted; crop it or split it into tiles"
    )
    # Under the aspect cap, the padded area counts: 4960×5000 pads to 4960×5024 and fits, 5000×5000 does not.
    check_size(4960, 5000, limits)
    with pytest.raises(ImageError, match=f"as 5024×5024 = 25240576 pixels, over the {MAX_MODEL_PIXELS} accepted"):
        check_size(5000, 5000, limits)
    # Multi-scale test-time augmentation enlarges what the model sees.
    with pytest.raises(ImageError, match=r"as 6016×6016 \(resized by 2\) = 36192256 pixels"):
        check_size(3000, 3000, SizeLimits(scale=2.0))
    # Tall strips too, and a model with another size multiple.
    with pytest.raises(ImageError, match="ratio of 33:1"):
        check_size(1, 1056, limits)
    assert processed_size(33, 1, SizeLimits(size_multiple=16)) == (48, 16)


def test_predict_refuses_the_one_pixel_strip_and_segments_the_rest(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "w.png").write_bytes(png(1_048_576, 1, "L"))  # a real file of about a kilobyte
    (folder / "strip.png").write_bytes(png(2048, 1))  # over the aspect cap once padded: 2048×32
    (folder / "ok.png").write_bytes(png(40, 30))
    code = predict(checkpoint, tmp_path / "out", folder)
    captured = capsys.readouterr()
    assert code == 1
    assert error_lines(captured.err) == [
        f"error: {folder / 'strip.png'}: the image is 2048×1 pixels and the model processes it as 2048×32, sides in "
        "a ratio of 64:1, over the 32:1 accepted; crop it or split it into tiles",
        f"error: {folder / 'w.png'}: the image is 1048576×1 pixels and the model processes it as 1048576×32, sides "
        "in a ratio of 32768:1, over the 32:1 accepted; crop it or split it into tiles",
    ]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["ok.json", "ok_mask.png", "ok_overlay.png"]


def test_the_python_api_checks_every_image_form(predictor: Predictor, tmp_path: Path) -> None:
    (tmp_path / "strip.png").write_bytes(png(2048, 1))
    strips = {
        "path": tmp_path / "strip.png",
        "bytes": png(2048, 1),
        "PIL": Image.new("RGB", (2048, 1)),
        "array": np.zeros((1, 2048, 3), dtype=np.uint8),
        "tensor": torch.zeros(3, 1, 2048),
    }
    for form, image in strips.items():
        with pytest.raises(ValueError, match="ratio of 64:1, over the 32:1 accepted") as refused:
            predictor.predict(image)
        assert "\n" not in str(refused.value), form
    # Multi-scale augmentation counts: 800 px scaled by 8 pads to 6400×6400 > 25 Mpx; the image is not resized.
    with pytest.raises(ImageError, match=r"resized by 8\)"):
        predictor.predict(torch.zeros(3, 800, 800), scales=[1.0, 8.0])
    assert predictor.predict(torch.zeros(3, 20, 30)).labels.shape == (20, 30)
    assert Predictor(predictor.model, limits=None).predict(np.zeros((1, 80), dtype=np.uint8)).labels.shape == (1, 80)


def test_serve_refuses_the_strip_and_counts_padded_pixels(client: TestClient, predictor: Predictor) -> None:
    response = upload(client, png(1_048_576, 1, "L"))
    assert response.status_code == 400
    assert response.json()["error"] == (
        "upload: the image is 1048576×1 pixels and the model processes it as 1048576×32, sides in a ratio of "
        "32768:1, over the 32:1 accepted; crop it or split it into tiles"
    )
    # 2017×2000 has fewer pixels than the cap of 2016×2016, but the model processes it padded to 2048×2016.
    with TestClient(create_app(predictor, AppLimits(max_pixels=2016 * 2016))) as small:
        response = upload(small, png(2017, 2000))
    assert response.status_code == 400
    assert "as 2048×2016 = 4128768 pixels, over the 4064256 accepted" in response.json()["error"]


def test_serve_refuses_cross_site_posts(client: TestClient) -> None:
    image = png(40, 30)
    cross_site = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed page
    ]
    for headers in cross_site:
        response = upload(client, image, headers)
        assert response.status_code == 403, headers
        assert response.json()["error"].startswith("cross-site request refused (")
    # The page's own requests, and clients that are not browsers.
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://testserver"}, {}):
        assert upload(client, image, headers).status_code == 200, headers
    assert client.get("/").headers["Referrer-Policy"] == "same-origin"  # so the page's posts carry its Origin


def test_a_client_that_disconnects_mid_upload_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    from starlette.requests import ClientDisconnect

    class Disconnecting:
        def __init__(self) -> None:
            self.headers: dict[str, str] = {}

        async def stream(self):
            yield b"x" * 100
            raise ClientDisconnect()

    caplog.set_level(logging.INFO, logger="bridgeseg")
    with pytest.raises(ClientError, match="the client disconnected before the upload was complete"):
        asyncio.run(read_body(Disconnecting(), 1000, AppLimits()))
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.INFO, "the client disconnected during the upload (100 bytes received)")
    ]


# ---------------------------------------------------------------------------------------------------------------
# 2. Outputs never replace a file predict did not write
# ---------------------------------------------------------------------------------------------------------------


def test_predict_refuses_an_input_folder_as_out_and_loses_nothing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "x.png").write_bytes(png(40, 30))
    (folder / "x_mask.png").write_bytes(png(40, 30, "L"))  # a ground-truth mask
    (folder / "x.json").write_text('{"shapes": []}\n')  # a labelme annotation
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    for argument in (folder, folder / "x.png", folder / "*.png"):
        assert predict(checkpoint, folder, argument) == 2
        assert error_lines(capsys.readouterr().err) == [
            f"error: --out {folder} is the folder of the input {folder / 'x.png'}: the results would replace files "
            "there (such as a ground-truth <name>_mask.png) and be read as inputs next time; choose another --out "
            "folder"
        ]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_predict_replaces_existing_outputs_only_with_overwrite(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.png").write_bytes(png(40, 30))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_mask.png").write_bytes(b"a file of the user's")
    assert predict(checkpoint, out, tmp_path / "x.png") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {out} already holds 1 of the output files (x_mask.png); pass --overwrite to replace them, or choose "
        "another --out folder"
    ]
    assert sorted(path.name for path in out.iterdir()) == ["x_mask.png"]
    assert (out / "x_mask.png").read_bytes() == b"a file of the user's"
    assert predict(checkpoint, out, tmp_path / "x.png", options=("--overwrite",)) == 0
    with Image.open(out / "x_mask.png") as mask:
        assert mask.size == (40, 30)
    # A second run into the same folder is refused as well: the first run's files are not this run's.
    assert predict(checkpoint, out, tmp_path / "x.png") == 2
    assert "already holds 3 of the output files" in capsys.readouterr().err


def test_gif_is_read_in_folders_as_given_by_name(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("P", (40, 30)).save(folder / "anim.gif")
    assert predict(checkpoint, tmp_path / "out", folder) == 0
    assert predict(checkpoint, tmp_path / "out2", folder / "anim.gif") == 0
    assert (tmp_path / "out" / "anim_mask.png").is_file() and (tmp_path / "out2" / "anim_mask.png").is_file()


# ---------------------------------------------------------------------------------------------------------------
# 8. Class names: one parser, one length cap
# ---------------------------------------------------------------------------------------------------------------


def test_quoted_names_may_hold_commas() -> None:
    assert parse_class_list('"salt, pepper", grass ,cat') == CLASSES
    assert parse_class_list('"a ""quoted"" name", b') == ['a "quoted" name', "b"]
    with pytest.raises(ValueError, match="holds a line break"):
        parse_class_list("cat\ndog")


def test_predict_takes_a_quoted_name_with_a_comma(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(png(40, 30))
    options = ("--classes", '"salt, pepper",grass,cat')
    assert predict(checkpoint, tmp_path / "out", tmp_path / "x.png", options=options) == 0
    assert json.loads((tmp_path / "out" / "x.json").read_text())["label_names"] == CLASSES


def test_blank_and_long_names_are_refused_alike_by_the_cli_the_api_and_the_server(
    checkpoint: Path, predictor: Predictor, client: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.png").write_bytes(png(40, 30))
    long_name = "x" * (MAX_CLASS_NAME_LENGTH + 1)
    long_message = (
        f"class name {'x' * 40!r}... is {MAX_CLASS_NAME_LENGTH + 1} characters long, over the "
        f"{MAX_CLASS_NAME_LENGTH} accepted; shorten it"
    )
    cases = {"cat,,dog": "class name 2 of 3 is blank; remove the doubled or trailing comma", long_name: long_message}
    for text, message in cases.items():
        assert predict(checkpoint, tmp_path / "out", tmp_path / "x.png", options=("--classes", text)) == 2
        assert error_lines(capsys.readouterr().err) == [f"error: {message}"]
        response = upload(client, png(40, 30), classes=text)
        assert response.status_code == 400 and response.json()["error"] == message
    with pytest.raises(ValueError, match=r"class names at positions \[1\] are blank"):
        predictor.predict(torch.zeros(3, 8, 8), classes=["cat", " ", "dog"])
    with pytest.raises(ValueError) as refused:
        predictor.predict(torch.zeros(3, 8, 8), classes=["cat", long_name])
    assert str(refused.value) == long_message
    assert AppLimits().max_class_name_length == MAX_CLASS_NAME_LENGTH


# ---------------------------------------------------------------------------------------------------------------
# Issue 21: a bounded cost for every input
# ---------------------------------------------------------------------------------------------------------------

EVERY_MODE = [
    {"mode": mode, "flip": flip, "return_probs": probs}
    for mode in ("whole", "slide")
    for flip in (False, True)
    for probs in (False, True)
]


@pytest.mark.parametrize("num_classes", [150, 171])  # ADE20K, COCO-Stuff
def test_ade_and_coco_stuff_at_512_fit_the_budget_in_every_mode(num_classes: int) -> None:
    assert num_classes <= MAX_CLASSES
    for options in EVERY_MODE:
        assert check_logits_budget(num_classes, 512, 512, **options).values <= MAX_LOGIT_VALUES


def test_ten_thousand_names_are_refused_before_they_are_embedded(
    checkpoint: Path, predictor: Predictor, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    names = [f"class {index}" for index in range(10_000)]
    # The budget alone, from the sizes: 10,000 classes at 512 × 512 are over it in every mode.
    for options in EVERY_MODE:
        with pytest.raises(ValueError, match=r"over the budget of .*; give fewer classes"):
            check_logits_budget(len(names), 512, 512, **options)
    # The CLI refuses the list when it parses it, before the model is loaded.
    (tmp_path / "x.png").write_bytes(png(40, 30))
    assert predict(checkpoint, tmp_path / "out", tmp_path / "x.png", options=("--classes", ",".join(names))) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: 10000 class names, over the {MAX_CLASSES} accepted in one list; give fewer classes"
    ]
    # The API refuses it before the text encoder sees a name.
    monkeypatch.setattr(predictor.backend, "text_embeddings", lambda classes: pytest.fail("embedded"))
    with pytest.raises(ValueError, match=f"over the {MAX_CLASSES} accepted"):
        predictor.predict(torch.zeros(3, 8, 8), classes=names)


def test_the_api_and_serve_check_the_budget_on_the_header_before_decoding(
    predictor: Predictor, client: TestClient, monkeypatch
) -> None:
    many = [f"class {index}" for index in range(MAX_CLASSES)]
    image = png(1024, 1024)  # 1000 classes × 1 Mpx × 3 maps with probabilities: over the budget
    monkeypatch.setattr("bridgeseg.runtime.predictor.to_tensor", lambda *args, **kwargs: pytest.fail("decoded"))
    with pytest.raises(ValueError, match="do not ask for probabilities"):
        predictor.predict(image, classes=many, return_probs=True)
    monkeypatch.setattr("bridgeseg.app.server.read_image", lambda *args, **kwargs: pytest.fail("decoded"))
    response = upload(client, image, classes=",".join(many), mode="slide", tta="true")
    assert response.status_code == 400 and "over the budget" in response.json()["error"]
    assert AppLimits().max_classes == MAX_CLASSES


def test_a_25_megapixel_image_is_planned_in_bounded_memory_without_allocating_it() -> None:
    side = 4992  # 24.9 Mpx, under the model's 25 Mpx limit
    for mode in ("whole", "slide"):
        for flip in (False, True):
            plan = check_logits_budget(len(CLASSES), side, side, mode, flip)
            assert plan.values <= MAX_LOGIT_VALUES
            # Labels only: one tile ("whole") or one band of windows per view ("slide"), never the whole map.
            assert plan.tile_side or plan.band
            assert plan.values < len(CLASSES) * side * side
    # Probabilities are returned whole: [K, H, W] at 25 Mpx with many classes is over the budget.
    with pytest.raises(ValueError, match="do not ask for probabilities"):
        check_logits_budget(171, side, side, return_probs=True)


def test_ordinary_images_are_segmented_in_one_pass() -> None:
    for options in EVERY_MODE:
        plan = plan_logits(len(CLASSES), 1920, 1080, **options)
        assert not plan.tile_side and not plan.band
    # Many classes shrink the tiles of "whole" mode to fit the budget rather than refuse the image.
    plan = check_logits_budget(MAX_CLASSES, 1920, 1080)
    assert plan.tile_side and plan.values <= MAX_LOGIT_VALUES


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> int:
    """Tiles of 96 px with 32 px of context, so a 200 px image is tiled as a 25 Mpx one is."""
    monkeypatch.setattr(budget, "ONE_PASS_SIDE", 96)
    monkeypatch.setattr(budget, "TILE_SIDE", 96)
    monkeypatch.setattr(budget, "MIN_TILE_SIDE", 96)
    monkeypatch.setattr(loop, "TILE_CONTEXT", 32)
    return 96


@pytest.mark.parametrize("flip", [False, True])
def test_large_images_are_segmented_tile_by_tile_and_slide_gives_the_same_labels(
    predictor: Predictor, small_tiles: int, monkeypatch: pytest.MonkeyPatch, flip: bool
) -> None:
    backend = predictor.backend
    image = torch.rand(1, 3, 200, 230, generator=torch.Generator().manual_seed(0))
    embeddings = backend.text_embeddings(None)
    with torch.inference_mode():
        monkeypatch.setattr(budget, "ONE_PASS_SIDE", 4096)
        whole = loop.segment(backend, image, embeddings, "slide", crop_size=64, stride=40, flip=flip)
        monkeypatch.setattr(budget, "ONE_PASS_SIDE", small_tiles)
        inputs: list[tuple[int, int]] = []
        forward = backend.logits
        monkeypatch.setattr(
            backend, "logits", lambda images, text: inputs.append(images.shape[-2:]) or forward(images, text)
        )
        banded = loop.segment(backend, image, embeddings, "slide", crop_size=64, stride=40, flip=flip)
        assert torch.equal(banded, whole)  # the same windows summed in the same order
        inputs.clear()
        monkeypatch.setattr(backend, "coarse_logits", None)
        tiled = loop.segment(backend, image, embeddings, "whole", flip=flip)
    assert tiled.shape == (1, 200, 230)
    assert inputs and all(height * width <= small_tiles**2 for height, width in inputs)


def test_data_mosaic_refuses_sizes_and_counts_over_its_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mosaic"
    for options, limit in ((("--size", "100000"), MAX_SIZE), (("--num-train", str(MAX_IMAGES + 1)), MAX_IMAGES)):
        assert main(["data", "mosaic", "--out", str(out), *options]) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert str(limit) in line
    assert not out.exists()
