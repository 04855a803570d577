"""`bridgeseg predict` through the real entry point: inputs, outputs, names, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgeseg.checkpoints import save_checkpoint
from bridgeseg.cli import main
from bridgeseg.cli.predict import _output_stems
from bridgeseg.models import create_model
from tests.conftest import CLASSES

TINY = dict(backbone="test_resnet", fusion_dim=32, decoder_channels=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bridge checkpoint with stand-in class embeddings: no text encoder is loaded."""
    embeddings = torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
    model = create_model("bridge", class_embeddings=embeddings, classes=CLASSES, **TINY)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


def write_image(path: Path, size: tuple[int, int] = (40, 50), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def predict(checkpoint: Path, out: Path, *inputs: str | Path, options: tuple[str, ...] = ()) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), *options, *map(str, inputs)])


def test_folder_and_glob_with_a_corrupt_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "folder"
    write_image(folder / "a.png", (40, 50))
    write_image(folder / "b.jpg", (33, 70), seed=1)
    (folder / "notes.txt").write_text("not an image")  # not an image extension: not listed
    write_image(tmp_path / "globbed" / "c.png", (64, 64), seed=2)
    (tmp_path / "globbed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"

    code = predict(checkpoint, out, folder, tmp_path / "globbed" / "*.png", options=("--mode", "slide", "--tta"))
    captured = capsys.readouterr()
    assert code == 1
    assert str(tmp_path / "globbed" / "broken.png") in captured.err
    assert "wrote results for 3 of 4 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in "abc" for suffix in ("_mask.png", "_overlay.png", ".json")
    )
    for stem, (height, width) in {"a": (40, 50), "b": (33, 70), "c": (64, 64)}.items():
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == (width, height)
            assert np.asarray(mask).max() < len(CLASSES)
        with Image.open(out / f"{stem}_overlay.png") as rendered:
            assert rendered.height >= height and rendered.width > width  # the legend panel
        summary = json.loads((out / f"{stem}.json").read_text())
        assert summary["width"] == width and summary["height"] == height
        assert summary["label_names"] == CLASSES and set(summary["classes"]) <= set(CLASSES)
        assert sum(summary["classes"].values()) == pytest.approx(1.0)
        assert Path(summary["image"]).name.startswith(stem)


def test_all_good_exits_0_and_open_vocabulary_classes(tmp_path: Path, capsys) -> None:
    model = create_model("lseg", classes=CLASSES, text_encoder="minilm", **TINY)
    checkpoint = save_checkpoint(model, tmp_path / "model")
    image = write_image(tmp_path / "street.png")
    assert predict(checkpoint, tmp_path / "out", image, options=("--classes", " sky, road,car ")) == 0
    summary = json.loads((tmp_path / "out" / "street.json").read_text())
    assert summary["label_names"] == ["sky", "road", "car"]
    assert set(summary["classes"]) <= {"sky", "road", "car"}


def test_output_names_never_escape_and_never_collide(checkpoint: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "one" / "img.png")
    write_image(tmp_path / "two" / "img.png", seed=1)
    write_image(tmp_path / "two" / "IMG.PNG", seed=2)
    write_image(tmp_path / "odd" / "..  we?ird*name .png", seed=3)
    inside = tmp_path / "work" / "out"
    inside.mkdir(parents=True)
    # A "../" path must not place outputs beside `out`.
    code = predict(
        checkpoint,
        inside,
        tmp_path / "work" / ".." / "one" / "img.png",
        tmp_path / "two",
        tmp_path / "odd",
    )
    assert code == 0
    names = sorted(p.name for p in inside.iterdir())
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]
    assert len(names) == 4 * 3
    stems = {name.rsplit(".", 1)[0] for name in names if name.endswith(".json")}
    assert stems == {"img", "IMG_1", "img_2", "we_ird_name"}

    # The naming rule on its own: no separators, no hidden or parent names, distinct case-insensitively.
    paths = [Path("../x.png"), Path("/etc/x.png"), Path(".."), Path("a/.hidden.png"), Path("-rf.png"), Path("X.jpg")]
    stems = _output_stems(paths)
    assert stems == ["x", "x_1", "image", "hidden", "rf", "X_2"]
    assert all("/" not in stem and not stem.startswith(".") for stem in stems)


def test_many_classes_write_16_bit_masks(tmp_path: Path) -> None:
    classes = [f"class {i}" for i in range(300)]
    model = create_model("fpn", classes=classes, **TINY)
    checkpoint = save_checkpoint(model, tmp_path / "model")
    assert predict(checkpoint, tmp_path / "out", write_image(tmp_path / "x.png")) == 0
    with Image.open(tmp_path / "out" / "x_mask.png") as mask:
        assert mask.mode in ("I;16", "I") and mask.size == (50, 40)
        assert np.asarray(mask).max() < 300


def test_user_errors_are_one_line_with_exit_code_2(checkpoint: Path, tmp_path: Path, capsys) -> None:
    image = write_image(tmp_path / "x.png")
    closed = save_checkpoint(create_model("fpn", classes=CLASSES, **TINY), tmp_path / "fpn")
    cases = [
        (closed, [image], ("--classes", "dog,car"), "closed-set"),
        (tmp_path / "nowhere", [image], (), "no such checkpoint"),
        (checkpoint, [tmp_path / "empty_dir"], (), "no image in this folder"),
        (checkpoint, [image, tmp_path / "typo.png"], (), "typo.png: no such file"),
        (checkpoint, [image], ("--classes", "sky,sky"), "duplicate"),
        # The command line and the web app read class lists alike: a doubled or trailing comma is refused.
        (checkpoint, [image], ("--classes", "sky,road,"), "class name 3 of 3 is blank"),
    ]
    (tmp_path / "empty_dir").mkdir()
    for ckpt, inputs, options, message in cases:
        code = predict(ckpt, tmp_path / "out", *inputs, options=options)
        err = capsys.readouterr().err
        assert message in err, err
        assert code in (1, 2), message
    # Nothing found at all is a usage error; a missing input among good ones is a failure.
    assert predict(checkpoint, tmp_path / "out", tmp_path / "empty_dir", tmp_path / "*.nothing") == 2
    assert predict(checkpoint, tmp_path / "fresh", image, tmp_path / "typo.png") == 1  # "out" holds x's results


def test_progress_is_logged_per_image_when_not_on_a_terminal(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = [write_image(tmp_path / f"{name}.png", seed=seed) for seed, name in enumerate("ab")]
    caplog.set_level("INFO", logger="bridgeseg.cli.predict")
    assert predict(checkpoint, tmp_path / "out", *images) == 0  # pytest's stderr is not a terminal: no bar
    lines = [record.getMessage() for record in caplog.records if record.name == "bridgeseg.cli.predict"]
    assert lines[0].startswith(f"segmenting with {checkpoint}")  # once, with the runtime and precision
    assert [line.split(" (")[0] for line in lines[1:]] == [f"[1/2] {images[0]} done", f"[2/2] {images[1]} done"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from bridgeseg import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"bridgeseg {__version__}"


def test_precision_option(checkpoint: Path, tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    from bridgeseg.models import inference

    image = write_image(tmp_path / "in" / "x.png")
    monkeypatch.setattr(inference, "bf16_is_fast", lambda: False)  # as on a CPU without AVX512-BF16 or AMX
    assert predict(checkpoint, tmp_path / "fp32", image, options=("--precision", "fp32")) == 0
    with caplog.at_level("WARNING", logger="bridgeseg.models.inference"):
        assert predict(checkpoint, tmp_path / "bf16", image, options=("--precision", "bf16")) == 0
    assert [record.getMessage() for record in caplog.records if "slower than fp32" in record.getMessage()]
    fp32_mask = np.asarray(Image.open(tmp_path / "fp32" / "x_mask.png"))
    bf16_mask = np.asarray(Image.open(tmp_path / "bf16" / "x_mask.png"))
    assert fp32_mask.shape == bf16_mask.shape
    capsys.readouterr()
    code = predict(tmp_path / "model.onnx", tmp_path / "onnx", image, options=("--precision", "bf16"))
    assert code == 2 and "PyTorch and OpenVINO runtimes only" in capsys.readouterr().err


@pytest.mark.parametrize("native", [False, True])
def test_default_precision_is_fp32_and_recorded(checkpoint: Path, tmp_path: Path, monkeypatch, caplog, native) -> None:
    from bridgeseg.models import inference

    image = write_image(tmp_path / "in" / "x.png")
    monkeypatch.setattr(inference, "bf16_is_fast", lambda: native)
    with caplog.at_level("INFO", logger="bridgeseg.cli.predict"):
        assert predict(checkpoint, tmp_path / "default", image) == 0
        assert predict(checkpoint, tmp_path / "auto", image, options=("--precision", "auto")) == 0
    said = [record.getMessage() for record in caplog.records if "runtime" in record.getMessage()]
    assert len(said) == 2 and "torch runtime, fp32" in said[0]
    assert json.loads((tmp_path / "default" / "x.json").read_text())["precision"] == "fp32"
    auto = json.loads((tmp_path / "auto" / "x.json").read_text())
    assert auto["precision"] == ("bf16" if native else "fp32") and auto["runtime"] == "torch"
    with pytest.raises(SystemExit) as exit_info:
        predict(checkpoint, tmp_path / "bad", image, options=("--precision", "fp16"))
    assert exit_info.value.code == 2


def test_out_that_is_a_file_and_onnx_runtime_on_a_folder_are_explained(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "in" / "x.png")
    a_file = tmp_path / "results"
    a_file.write_text("the user's notes")
    assert predict(checkpoint, a_file, image) == 2
    assert (
        capsys.readouterr().err
        == f"error: --out {a_file} is a file; --out must be a folder (a new or an existing one)\n"
    )
    assert a_file.read_text() == "the user's notes"

    assert predict(checkpoint, tmp_path / "out", image, options=("--runtime", "onnx")) == 2
    error = capsys.readouterr().err
    assert error == (
        f"error: {checkpoint} is a folder; the onnx runtime runs one .onnx file: export it with `bridgeseg export "
        f"--checkpoint {checkpoint} --onnx model.onnx` and pass model.onnx (the folder runs as it is with PyTorch)\n"
    )


def test_progress_lines_say_what_the_time_measures(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = write_image(tmp_path / "a.png")
    caplog.set_level("INFO", logger="bridgeseg.cli.predict")
    assert predict(checkpoint, tmp_path / "out", image) == 0
    lines = [record.getMessage() for record in caplog.records if record.name == "bridgeseg.cli.predict"]
    (line,) = [line for line in lines if line.startswith("[")]  # after the one "segmenting with ..." line
    assert line.startswith(f"[1/1] {image} done (") and line.endswith(" s since the first image)")
