"""The offline quickstart behind `make demo` / `bridgeseg demo`: data, training, evaluation, overlays.

Everything runs on the CPU without a network, in about 6 minutes on two cores:

1. generate the photo-mosaic stand-in dataset (`bridgeseg.data.mosaic`) into `data/mosaic`, or reuse it when it
   is already there with the same parameters;
2. train `bridge` on EfficientNet-Lite0 (offline ImageNet weights) with MiniLM text embeddings through the real
   engine (`bridgeseg fit --config mosaic/bridge_efficientnet_lite0_128x128_600.yaml`, a shipped config);
3. evaluate on the mosaic val split (per-class table, mIoU);
4. write `metrics.json`, a self-contained checkpoint (`model/`), and colour overlays of val images and of whole
   bundled photos, one of them with an open-vocabulary class list.

MiniLM is a sentence encoder without image-text pretraining: it stands in for CLIP's text tower, which needs a
download. The mosaic is a stand-in too: its scores say the pipeline works, not how well it segments real scenes.

Example:
    >>> from bridgeseg.demo import run_demo
    >>> metrics = run_demo("outputs/demo")  # doctest: +SKIP

A quick run (`quick=True`, `bridgeseg demo --quick`) writes to `outputs/demo-quick` and never replaces a full
demo; an earlier demo in the output folder is replaced only with `overwrite=True` (`--overwrite`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from bridgeseg.configs import CONFIG_DIR
from bridgeseg.errors import OutputExistsError
from bridgeseg.io import check_output_folder, refuse_existing, refuse_input_as_output

if TYPE_CHECKING:
    from bridgeseg.predictor import Predictor

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_CONFIG",
    "DEMO_DATA",
    "DEMO_OUT",
    "OPEN_VOCABULARY_EXAMPLE",
    "PHOTO_EXAMPLES",
    "QUICK_DEMO_OUT",
    "ensure_mosaic",
    "run_demo",
]

# The demo's recipe, shipped with the package: a wheel install and a source checkout run the same one.
DEMO_CONFIG = CONFIG_DIR / "mosaic" / "bridge_efficientnet_lite0_128x128_600.yaml"
# Mosaic data of the demo: `generate_mosaic`'s defaults (difficulty included), written out so the reuse check
# can compare them with an existing folder.
DEMO_DATA: dict[str, Any] = {"num_train": 400, "num_val": 100, "size": 192, "seed": 0}
# Whole bundled photos segmented with the training classes.
PHOTO_EXAMPLES = ("cat", "coffee cup", "astronaut", "brick wall")
# A photo and a class list the model never trained on ("dog", "wall", "floor" are not mosaic classes).
OPEN_VOCABULARY_EXAMPLE = ("cat", ("cat", "dog", "wall", "floor"))
# A quick run has a folder of its own, so that the smoke test never lands on the model `make demo` trained.
DEMO_OUT = "outputs/demo"
QUICK_DEMO_OUT = "outputs/demo-quick"
# What a demo writes into its folder; any of them there means an earlier demo.
_DEMO_OUTPUTS = ("metrics.json", "model", "overlays", "run")
_NUM_VAL_OVERLAYS = 8
_QUICK_STEPS = 3


def _data_parameters(
    num_train: int, num_val: int, size: int, seed: int, include_cc_by: bool, difficulty: dict[str, Any]
) -> dict[str, Any]:
    """The parameters that define a generated mosaic, in the form `meta.json` records them."""
    from bridgeseg.data.mosaic import MosaicDifficulty, mosaic_classes

    knobs = MosaicDifficulty(**{key: tuple(v) if isinstance(v, list) else v for key, v in difficulty.items()})
    classes = mosaic_classes(include_cc_by)
    return {
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
        "include_cc_by": include_cc_by,
        "classes": classes[: knobs.num_classes] if knobs.num_classes else classes,
        "difficulty": {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(knobs).items()
        },
    }


def ensure_mosaic(
    data_dir: str | os.PathLike[str],
    num_train: int,
    num_val: int,
    size: int,
    seed: int,
    include_cc_by: bool = False,
    **difficulty: Any,
) -> bool:
    """Generate the mosaic into `data_dir` unless it already holds one with the same parameters.

    An earlier mosaic with other parameters (or older difficulty defaults) is replaced; a folder that holds
    anything else is left alone and reported (`generate_mosaic` refuses it).

    Args:
        data_dir: Dataset folder.
        num_train: Training images.
        num_val: Validation images.
        size: Image side in pixels.
        seed: Generator seed.
        include_cc_by: Also use the two CC BY 2.0 photos (see `generate_mosaic`).
        **difficulty: Fields of `MosaicDifficulty`; the rest keep their defaults.

    Returns:
        True if the data was generated now, False if the existing folder was reused.
    """
    from bridgeseg.data.mosaic import generate_mosaic

    data_dir = Path(data_dir)
    wanted = _data_parameters(num_train, num_val, size, seed, include_cc_by, difficulty)
    meta_path = data_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(key) == value for key, value in wanted.items()):
            logger.info("reusing the mosaic in %s (same parameters)", data_dir)
            return False
        logger.info("the mosaic in %s was made with other parameters; generating it again", data_dir)
    generate_mosaic(
        data_dir,
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        include_cc_by=include_cc_by,
        overwrite=True,
        progress=True,
        **difficulty,
    )
    return True


def _fit_arguments(
    data_dir: Path, run_dir: Path, quick: bool, max_steps: int | None, batch_size: int | None, crop_size: int | None
) -> list[str]:
    """`bridgeseg fit` arguments: the demo config plus overrides."""
    overrides = {"--data.root": str(data_dir), "--trainer.default_root_dir": str(run_dir)}
    if quick:
        max_steps, batch_size, crop_size = max_steps or _QUICK_STEPS, batch_size or 2, crop_size or 64
        overrides["--data.num_workers"] = "0"
    if max_steps:
        # One validation, at the end; warmup kept at the config's share of the schedule (30 of 600).
        overrides["--trainer.max_steps"] = str(max_steps)
        overrides["--trainer.val_check_interval"] = str(max_steps)
        overrides["--model.warmup_iters"] = str(max(1, max_steps // 20))
    if batch_size:
        overrides["--data.batch_size"] = str(batch_size)
    if crop_size:
        overrides["--data.crop_size"] = str(crop_size)
    return ["fit", "--config", str(DEMO_CONFIG), *(item for pair in overrides.items() for item in pair)]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def _check_out_dir(out_dir: Path, data_dir: Path, quick: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier demo without `overwrite`, and a full demo with a quick one at all.

    A quick run is a smoke test of 3 iterations: its model is worthless, so it never replaces a full demo's model
    and metrics, `--overwrite` or not. Any other earlier demo in `out_dir` is replaced only with `overwrite`.

    Raises:
        OutputExistsError: `out_dir` is a file or the data folder, or holds a demo that may not be replaced.
    """
    check_output_folder(out_dir)
    refuse_input_as_output(out_dir, [data_dir], "--out")
    if quick:
        try:
            earlier = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict) and earlier.get("quick") is False:
            raise OutputExistsError(
                f"{out_dir} holds a full demo ({earlier.get('iterations')} iterations); a --quick run never replaces "
                f"it, even with --overwrite: choose another --out (the default for --quick is {QUICK_DEMO_OUT})"
            )
    refuse_existing((out_dir / name for name in _DEMO_OUTPUTS), overwrite, "--out", folder=out_dir)


def _val_overlays(predictor: Predictor, data_dir: Path, out_dir: Path, count: int) -> list[Path]:
    """`val_*.png`: image | ground truth | prediction, each with its legend."""
    from bridgeseg.images import load_image, load_mask
    from bridgeseg.visualize import overlay

    classes = predictor.classes
    paths = []
    for image_path in sorted((data_dir / "images" / "val").glob("*.png"))[:count]:
        image = load_image(image_path)
        mask = load_mask(data_dir / "masks" / "val" / image_path.name).numpy()
        prediction = predictor.predict(image)
        truth = overlay(image, mask, classes, alpha=0.6)
        predicted = overlay(image, prediction.labels, classes, alpha=0.6)
        panels = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)), truth, predicted]
        canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * 2, max(p.height for p in panels)), "white")
        x = 0
        for panel in panels:
            canvas.paste(panel, (x, 0))
            x += panel.width + 8
        # The mosaic names its val images val_<index> already.
        stem = image_path.stem if image_path.stem.startswith("val_") else f"val_{image_path.stem}"
        path = out_dir / f"{stem}.png"
        canvas.save(path)
        paths.append(path)
    return paths


def _photo_overlays(predictor: Predictor, out_dir: Path, short_side: int) -> dict[str, dict[str, Any]]:
    """Whole bundled photos with the training classes, and one with an open-vocabulary class list.

    Each photo is first resized to `short_side`, the scale at which the mosaic shows it (`photo_scale` image
    sizes), so that its textures look as they did in training.
    """
    from bridgeseg.data.mosaic import load_source_photo
    from bridgeseg.visualize import overlay

    jobs: list[tuple[str, str, Sequence[str] | None]] = [
        (f"photo_{name.replace(' ', '_')}", name, None) for name in PHOTO_EXAMPLES
    ]
    photo, open_classes = OPEN_VOCABULARY_EXAMPLE
    jobs.append((f"open_vocab_{photo.replace(' ', '_')}", photo, open_classes))
    results = {}
    for stem, name, classes in jobs:
        photo = Image.fromarray(load_source_photo(name))
        factor = short_side / min(photo.size)
        size = (round(photo.width * factor), round(photo.height * factor))
        image = np.asarray(photo.resize(size, Image.Resampling.LANCZOS))
        prediction = predictor.predict(image, classes=classes)
        path = out_dir / f"{stem}.png"
        overlay(image, prediction.labels, prediction.classes, alpha=0.5).save(path)
        areas = {label: round(share, 4) for label, share in prediction.areas().items()}
        results[stem] = {
            "photo": name,
            "size": list(size),
            "classes": list(prediction.classes),
            "areas": areas,
            "path": str(path),
        }
    return results


def run_demo(
    out_dir: str | os.PathLike[str] | None = None,
    quick: bool = False,
    *,
    overwrite: bool = False,
    data_dir: str | os.PathLike[str] = "data/mosaic",
    num_train: int | None = None,
    num_val: int | None = None,
    size: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    crop_size: int | None = None,
) -> dict[str, Any]:
    """Run the offline quickstart and write its results into `out_dir`.

    Args:
        out_dir: Output folder: `metrics.json`, `model/` (checkpoint), `overlays/`, `run/` (Lightning logs);
            default `outputs/demo`, or `outputs/demo-quick` with `quick`.
        quick: A smoke test: a few iterations at a small crop and batch.
        overwrite: Replace an earlier demo in `out_dir` (a quick run never replaces a full one).
        data_dir: Mosaic folder; generated when absent or made with other parameters.
        num_train: Training images of the mosaic (default 400).
        num_val: Validation images of the mosaic (default 100).
        size: Side of the mosaic images (default 192).
        max_steps: Training iterations (default: the config's 600; 3 with `quick`).
        batch_size: Training batch (default: the config's 8; 2 with `quick`).
        crop_size: Training crop side (default: the config's 128; 64 with `quick`).

    Returns:
        The content of `metrics.json`.

    Raises:
        OutputExistsError: `out_dir` holds an earlier demo and `overwrite` is not set, or a full demo and `quick`
            is set; checked before anything is generated or trained.
    """
    from bridgeseg.checkpoints import save_checkpoint
    from bridgeseg.engine.lightning import run_lightning_cli
    from bridgeseg.engine.metrics import format_table
    from bridgeseg.predictor import Predictor

    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir if out_dir is not None else QUICK_DEMO_OUT if quick else DEMO_OUT)
    data_dir = Path(data_dir)
    _check_out_dir(out_dir, data_dir, quick, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "num_train": num_train or DEMO_DATA["num_train"],
        "num_val": num_val or DEMO_DATA["num_val"],
        "size": size or DEMO_DATA["size"],
        "seed": DEMO_DATA["seed"],
    }
    generated = ensure_mosaic(data_dir, **data)
    data_seconds = time.perf_counter() - start

    train_start = time.perf_counter()
    cli = run_lightning_cli(_fit_arguments(data_dir, out_dir / "run", quick, max_steps, batch_size, crop_size))
    train_seconds = time.perf_counter() - train_start
    module, trainer = cli.model, cli.trainer
    results = getattr(module, "last_val_results", None)
    if results is None:  # a config without the final validation
        trainer.validate(module, datamodule=cli.datamodule, verbose=False)
        results = module.last_val_results
    classes = module.classes
    table = format_table(results, classes)

    model_dir = save_checkpoint(module.model, out_dir / "model")
    # Reloading proves the checkpoint is self-contained; the overlays come from the reloaded model.
    predictor = Predictor.from_checkpoint(model_dir)
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(exist_ok=True)
    val_overlays = _val_overlays(predictor, data_dir, overlay_dir, 2 if quick else _NUM_VAL_OVERLAYS)
    photo_scale = _data_parameters(**data, include_cc_by=False, difficulty={})["difficulty"]["photo_scale"]
    photos = _photo_overlays(predictor, overlay_dir, short_side=round(photo_scale * data["size"]))

    data_config = cli.datamodule
    metrics = {
        "mIoU": _finite(float(results["mIoU"])),
        "aAcc": _finite(float(results["aAcc"])),
        "mAcc": _finite(float(results["mAcc"])),
        "per_class_IoU": {name: _finite(float(v)) for name, v in zip(classes, results["IoU"].tolist(), strict=True)},
        "per_class_Acc": {name: _finite(float(v)) for name, v in zip(classes, results["Acc"].tolist(), strict=True)},
        "iterations": int(trainer.global_step),
        "batch_size": data_config.batch_size,
        "crop_size": data_config.crop_size,
        "quick": quick,
        "wall_time_s": round(time.perf_counter() - start, 1),
        # CPU seconds of this process (all its threads, data-loader workers not counted): with the wall time,
        # it shows how much of the machine the demo actually got.
        "cpu_time_s": round(time.process_time() - cpu_start, 1),
        "data_time_s": round(data_seconds, 1),
        "train_time_s": round(train_seconds, 1),
        "data": {
            "root": str(data_dir),
            "generated_now": generated,
            **_data_parameters(**data, include_cc_by=False, difficulty={}),
        },
        "model": module.model.config.to_dict() | {"classes": classes},
        "text_encoder_note": "minilm = all-MiniLM-L6-v2, a sentence encoder without image-text pretraining, "
        "standing in for CLIP's text tower (offline)",
        "checkpoint": {"path": str(model_dir), "format": "bridgeseg model folder (model.safetensors + config.json)"},
        "lightning_checkpoints": str(out_dir / "run" / "checkpoints"),
        "config": str(DEMO_CONFIG),
        "overlays": {"val": [str(p) for p in val_overlays], "photos": photos},
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")

    # User-facing summary of a CLI command.
    print(f"\nValidation on the mosaic ({data['num_val']} images, {len(classes)} classes):\n{table}")
    print(
        f"\nbridge / efficientnet_lite0 + minilm, {metrics['iterations']} iterations: mIoU {metrics['mIoU']}, "
        f"aAcc {metrics['aAcc']}; {metrics['wall_time_s']:.0f} s in total ({train_seconds:.0f} s training)"
    )
    print(f"  metrics      {out_dir / 'metrics.json'}")
    print(f"  checkpoint   {model_dir}   (bridgeseg predict IMAGES --checkpoint {model_dir} --out DIR)")
    print(f"  overlays     {overlay_dir}   ({len(val_overlays)} val images, {len(photos)} whole photos)")
    photo, open_classes = OPEN_VOCABULARY_EXAMPLE
    open_path = photos[f"open_vocab_{photo.replace(' ', '_')}"]["path"]
    unseen = [name for name in open_classes if name not in classes]
    print(f"  open vocab   {open_path}   ({', '.join(open_classes)}; never trained on: {', '.join(unseen)})")
    print(f"  logs         {out_dir / 'run'}")
    print(f"  data         {data_dir}" + (" (generated now)" if generated else " (reused)"))
    return metrics
