"""Damaged, unsafe and mismatched models in every command: one `error:` line, exit code 2, nothing written.

Each test is one case of issue 14 ("Reliability, round two"): corrupt ONNX files, ONNX metadata that disagrees with
its graph, corrupt or unsafe `.ckpt` files given to `fit`/`validate --ckpt_path`, `export` and `serve`, config
sizes that do not fit the weights, flipped bytes in the weights, symbolic links, unwritable destinations, and
Ctrl+C.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image

import bridgeseg.checkpoints
import bridgeseg.runtime.onnx
from bridgeseg.checkpoints import WEIGHTS_NAME, load_model, save_checkpoint
from bridgeseg.cli import EXIT_INTERRUPTED, main
from bridgeseg.engine.module import SegmentationTask
from bridgeseg.errors import CheckpointError
from bridgeseg.io import write_atomically
from bridgeseg.models import create_model
from bridgeseg.runtime.onnx import OnnxBackend, export_onnx
from tests.conftest import CLASSES
from tests.engine.helpers import fit_args, load_checkpoint, make_folder_dataset, run_cli

TINY = {"backbone": "test_resnet", "fusion_dim": 32, "decoder_channels": 16}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    embeddings = torch.nn.functional.normalize(torch.randn(len(CLASSES), 384), dim=-1)
    return create_model("bridge", class_embeddings=embeddings, classes=CLASSES, **TINY).eval()


@pytest.fixture(scope="module")
def checkpoint(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def onnx_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run's data folder and its `last.ckpt`."""
    root = tmp_path_factory.mktemp("run")
    data = make_folder_dataset(root / "data", num_train=4, num_val=2)
    assert main(["fit", *fit_args(data, root / "run", max_steps=1)]) == 0
    return data, root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "x.png")
    return tmp_path / "x.png"


def copy_checkpoint(checkpoint: Path, destination: Path) -> Path:
    destination.mkdir()
    for name in ("config.json", WEIGHTS_NAME):
        (destination / name).write_bytes((checkpoint / name).read_bytes())
    return destination


def predict_error(capsys: pytest.CaptureFixture[str], model_path: Path, image: Path, out: Path) -> str:
    """`bridgeseg predict` with a bad model: exit code 2, one line, no output folder."""
    code, error = run_cli(capsys, "predict", "--checkpoint", str(model_path), "--out", str(out), str(image))
    assert code == 2
    assert not out.exists()
    return error


# ---------------------------------------------------------------------------------------------------------------
# 3, 5. ONNX files: damaged, or metadata that disagrees with the graph
# ---------------------------------------------------------------------------------------------------------------


def test_a_truncated_or_corrupt_onnx_is_one_line(
    onnx_path: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = onnx_path.read_bytes()
    damaged = {"truncated.onnx": data[: len(data) // 2], "garbage.onnx": b"\xff" * 64 + data[64:]}
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        error = predict_error(capsys, tmp_path / name, image, tmp_path / "out")
        assert error.startswith(f"error: {tmp_path / name}: not a valid ONNX model ("), error
        assert error.endswith(
            "the file is truncated or corrupt: re-export it with `bridgeseg export --onnx` or re-copy it"
        )


def test_onnx_metadata_naming_another_class_count_is_refused_at_load(
    onnx_path: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        if prop.key == "classes":
            prop.value = json.dumps(["sky", "grass"])
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    error = predict_error(capsys, edited, image, tmp_path / "out")
    assert error == (
        f"error: {edited}: the graph gives 3 classes but its metadata names 2 (sky, grass); the metadata belongs to "
        "another model: re-export it with `bridgeseg export --onnx`"
    )
    for prop in proto.metadata_props:
        if prop.key == "classes":
            prop.value = "[not json"
    onnx.save(proto, str(edited))
    with pytest.raises(CheckpointError, match=r"its bridgeseg metadata is damaged \(JSONDecodeError: "):
        OnnxBackend(edited)


def test_onnx_metadata_copied_from_another_model_is_refused_at_load(
    onnx_path: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same classes, same inputs, another network: only the logits of the probe image tell them apart.
    other = create_model("fpn", classes=CLASSES, backbone="test_resnet", decoder_channels=16).eval()
    other_path = export_onnx(other, tmp_path / "other.onnx")
    OnnxBackend(other_path)  # as exported, it loads
    graph = onnx.load(str(other_path))
    source = {prop.key: prop.value for prop in onnx.load(str(onnx_path)).metadata_props}
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, source)
    copied = tmp_path / "copied.onnx"
    onnx.save(graph, str(copied))
    error = predict_error(capsys, copied, image, tmp_path / "out")
    assert error.startswith(f"error: {copied}: the graph does not give the logits recorded in its metadata at export")
    assert error.endswith("the metadata was copied from another model: re-export it with `bridgeseg export --onnx`")


# ---------------------------------------------------------------------------------------------------------------
# 4. Corrupt or unsafe .ckpt files in every command
# ---------------------------------------------------------------------------------------------------------------


class Payload:
    """Stands for code a pickle would run."""

    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def bad_checkpoints(last: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """A truncated copy of `last`, and a pickle holding code: each with the start of its message."""
    folder.mkdir(exist_ok=True)
    truncated, unsafe = folder / "truncated.ckpt", folder / "unsafe.ckpt"
    data = last.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {}, "payload": Payload()}, unsafe)
    return {
        "truncated": (truncated, f"error: {truncated}: corrupt or truncated checkpoint ("),
        "unsafe": (unsafe, f"error: {unsafe}: not a safe checkpoint: it holds Python objects (posix.system)"),
    }


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_fit_and_validate_refuse_a_bad_ckpt_path_in_one_line(
    command: str, training_checkpoint: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, last = training_checkpoint
    for path, message in bad_checkpoints(last, tmp_path / "bad").values():
        code, error = run_cli(capsys, command, *fit_args(data, tmp_path / "run", max_steps=2), "--ckpt_path", str(path))
        assert code == 2 and error.startswith(message), error
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    code, error = run_cli(capsys, command, *fit_args(data, tmp_path / "run", max_steps=2), "--ckpt_path", str(foreign))
    assert code == 2
    assert error == (
        f"error: {foreign}: not a Lightning training checkpoint (no state_dict); give a .ckpt written by "
        "`bridgeseg fit`"
    )


def test_predict_export_and_serve_refuse_bad_ckpt_files_in_one_line(
    training_checkpoint: tuple[Path, Path], image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, last = training_checkpoint
    for path, message in bad_checkpoints(last, tmp_path / "bad").values():
        assert predict_error(capsys, path, image, tmp_path / "out").startswith(message)
        code, error = run_cli(capsys, "export", "--checkpoint", str(path), "--onnx", str(tmp_path / "m.onnx"))
        assert code == 2 and error.startswith(message), error
        code, error = run_cli(capsys, "serve", "--checkpoint", str(path), "--port", "0")
        assert code == 2 and error.startswith(message), error
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------------------------
# 6. Config sizes checked against the weights before the model is built
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("fusion_dim", 1_000_000), ("decoder_channels", 24)])
def test_config_sizes_that_do_not_fit_the_weights_fail_before_the_model_is_built(
    key: str, value: int, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = copy_checkpoint(checkpoint, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["model"][key] = value
    (edited / "config.json").write_text(json.dumps(config))
    builds: list[torch.device] = []
    real_create_model = bridgeseg.checkpoints.create_model

    def recording_create_model(*args, **kwargs):
        builds.append(torch.get_default_device())
        return real_create_model(*args, **kwargs)

    monkeypatch.setattr(bridgeseg.checkpoints, "create_model", recording_create_model)
    with pytest.raises(CheckpointError) as refused:
        load_model(edited)
    message = str(refused.value)
    assert message.startswith(f"{edited}: the sizes in the model config do not fit the weights (")
    assert message.endswith(
        "was a size such as fusion_dim or decoder_channels edited? restore the config saved with the weights"
    )
    assert " in the weights, " in message and "\n" not in message
    assert builds == [torch.device("meta")]  # laid out on the meta device only: nothing allocated


def test_a_state_dict_mismatch_lists_every_tensor_on_one_line(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback when the model cannot be laid out on the meta device (some exotic backbones).
    monkeypatch.setattr(bridgeseg.checkpoints, "_check_shapes", lambda *args: None)
    edited = copy_checkpoint(checkpoint, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["model"]["decoder_channels"] = 24
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as refused:
        load_model(edited)
    message = str(refused.value)
    assert message.startswith(f"{edited}: the weights do not fit the model config: size mismatch for")
    assert message.count("size mismatch for") == 5 and message.endswith(" more") and "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# 10. Flipped bytes, symbolic links, unwritable places, Ctrl+C
# ---------------------------------------------------------------------------------------------------------------


def test_a_flipped_byte_in_the_weights_is_an_error(checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    weights = (checkpoint / WEIGHTS_NAME).read_bytes()
    assert config["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    damaged = copy_checkpoint(checkpoint, tmp_path / "damaged")
    flipped = bytearray(weights)
    flipped[-100] ^= 0x40  # inside the last tensor's data: the file still parses
    (damaged / WEIGHTS_NAME).write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as refused:
        load_model(damaged)
    assert str(refused.value) == (
        f"{damaged / WEIGHTS_NAME}: the weights are damaged: their SHA-256 is not the one recorded in config.json "
        "when they were saved (a corrupted copy or disk); re-copy or re-export the checkpoint"
    )
    assert load_model(checkpoint) is not None  # the intact original loads


def test_symbolic_links_that_loop_or_dangle_say_so(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop, other, dangling = tmp_path / "loop", tmp_path / "other", tmp_path / "dangling"
    os.symlink(other, loop)
    os.symlink(loop, other)
    os.symlink(tmp_path / "gone", dangling)
    error = predict_error(capsys, loop, image, tmp_path / "out")
    assert error == f"error: {loop}: a symbolic link that loops back on itself; point it at a checkpoint"
    with pytest.raises(CheckpointError, match=f"a symbolic link to {tmp_path / 'gone'}, which does not exist"):
        load_model(dangling)


def test_write_errors_name_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    for target in (tmp_path / "file" / "x.png", tmp_path / "file" / "sub" / "x.png"):
        with pytest.raises(OSError) as refused:
            write_atomically(target, lambda handle: handle.write(b"x"))
        # "File exists" when the parent is the file, "Not a directory" below it.
        assert f"could not write {target}: " in str(refused.value)
        assert ".tmp" not in str(refused.value)


def test_export_to_an_unwritable_place_fails_before_the_export(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args, **kwargs):
        raise AssertionError("the model was exported before the destination was checked")

    monkeypatch.setattr(bridgeseg.runtime.onnx.export, "_export_torchscript", no_export)
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "model.onnx"
    code, error = run_cli(capsys, "export", "--checkpoint", str(checkpoint), "--onnx", str(target))
    assert code == 2 and f" could not write {target}: " in error, error
    code, error = run_cli(capsys, "export", "--checkpoint", str(checkpoint), "--onnx", str(tmp_path))
    assert code == 2 and error == f"error: [Errno 21] could not write {tmp_path}: it is a folder; give a file name"
    out = tmp_path / "file" / "folder"
    export = ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]
    code, error = run_cli(capsys, *export)
    assert code == 2 and f" could not write {out / WEIGHTS_NAME}: Not a directory" in error, error


def test_ctrl_c_exits_130_with_one_line(
    checkpoint: Path,
    image: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bridgeseg.images

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bridgeseg.images, "load_image", interrupted)  # `predict` imports it when it runs
    predict = ["predict", "--out", str(tmp_path / "out"), str(image), "--checkpoint", str(checkpoint)]
    code, error = run_cli(capsys, *predict)
    assert code == EXIT_INTERRUPTED == 130
    assert error.startswith("error: interrupted (Ctrl+C);")


def test_ctrl_c_during_training_exits_130(
    training_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, _ = training_checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SegmentationTask, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        # Lightning shuts down gracefully and calls sys.exit(1), the code of "some images failed" in `predict`.
        code, error = run_cli(capsys, "fit", *fit_args(data, tmp_path / "run", max_steps=2))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C while it shuts down
    assert code == 130 and error.startswith("error: interrupted (Ctrl+C);")


# ---------------------------------------------------------------------------------------------------------------
# 9. fit checks the val masks first, and saves at the last iteration before the final validation
# ---------------------------------------------------------------------------------------------------------------


def break_mask(path: Path) -> None:
    with Image.open(path) as mask:
        labels = mask.copy()
    labels.putpixel((0, 0), 7)  # 3 classes: 7 is out of range
    labels.save(path)


def test_fit_checks_the_val_masks_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_dataset(tmp_path / "data", num_train=4, num_val=2)
    break_mask(data / "masks" / "val" / "001.png")
    code, error = run_cli(capsys, "fit", *fit_args(data, tmp_path / "run", max_steps=2))
    assert code == 2 and error.startswith(f"error: {data / 'masks' / 'val' / '001.png'}: "), error
    assert "label values 7 " in error
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_a_val_problem_at_the_final_validation_keeps_the_trained_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 20 val masks: the check before training reads 16 evenly spaced ones, not 002.png.
    data = make_folder_dataset(tmp_path / "data", num_train=8, num_val=20)
    break_mask(data / "masks" / "val" / "002.png")
    run = tmp_path / "run"
    # max_steps below the save interval (500), the only validation at the last iteration.
    code, error = run_cli(capsys, "fit", *fit_args(data, run, max_steps=4))
    assert code == 2 and error.startswith(f"error: {data / 'masks' / 'val' / '002.png'}: "), error
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_training_checkpoints_naming_the_old_classes_still_load(model: torch.nn.Module, tmp_path: Path) -> None:
    # Lightning records the module's class path when a config names it; checkpoints from before the renames
    # (SegmentationModule, BridgeSegmentor) name classes that no longer exist. Only the config and weights count.
    ckpt = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{name}": tensor for name, tensor in model.state_dict().items()},
            "hyper_parameters": {
                "net": {**model.config.to_dict(), "pretrained": False},
                "classes": list(model.classes),
                "_class_path": "bridgeseg.engine.module.SegmentationModule",
                "_instantiator": "lightning.pytorch.cli.instantiate_module",
            },
            "model_class": "bridgeseg.models.segmentor.BridgeSegmentor",
        },
        ckpt,
    )
    loaded = load_model(ckpt)
    assert type(loaded).__name__ == "BridgeModel" and loaded.classes == model.classes
    images = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.eval()(images), model.eval()(images))
