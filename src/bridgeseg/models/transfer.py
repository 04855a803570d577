"""Fine-tuning onto another vocabulary: start a model from the weights of a saved one.

`fit --model.init_from PATH` (`bridgeseg.engine.module.SegmentationTask`) calls `init_from_checkpoint` on the model
the run has built for its own classes. Every weight whose name and shape fit is copied; the class embeddings are
not taken from the checkpoint: the model already holds those of the run's class names, embedded by the run's text
encoder. The closed-set parts, whose size follows the class count (`SegmentationModel.class_indexed_weights`: the
`fpn` and `denseclip` classifiers, `denseclip`'s top lateral conv that takes the score map), are copied class by
class: a class of the run whose name matches one of the checkpoint's (case and whitespace aside) gets that class's
slice, and every other class keeps the slice a fresh model initialises, so that a fine-tuned `fpn` starts from
exactly what a fresh one would have for its new classes.

The checkpoint must hold the same method and backbone as the run: across methods only the backbone (and for some
pairs the decoder) would fit, which is what `--model.net.pretrained` is for, and across backbones nothing would.

Example:
    >>> model = create_model("bridge", classes=["sky", "road", "hedge"])  # doctest: +SKIP
    >>> report = init_from_checkpoint(model, "outputs/demo/model")  # doctest: +SKIP
    >>> print(report.describe())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from bridgeseg.errors import CheckpointError
from bridgeseg.models.methods.base import ModelConfig, SegmentationModel
from bridgeseg.models.saved import read_saved_model
from bridgeseg.vocabulary import validate_class_names

__all__ = ["TransferReport", "init_from_checkpoint", "match_classes", "transfer_weights"]

# Rebuilt from the run's class names by the run's text encoder, never copied.
_CLASS_EMBEDDINGS = "class_embeddings"


@dataclasses.dataclass
class TransferReport:
    """What `transfer_weights` did.

    Attributes:
        source: Where the weights came from.
        loaded: Weights copied whole.
        by_class: Class-indexed weights copied class by class (the shared part whole).
        new: Weights of the model that nothing fitted: they keep their initial values.
        dropped: Weights of the checkpoint that fit nothing in the model ("name (why)").
        matched: (class of the run, class of the checkpoint) pairs whose class-indexed slices were copied.
        new_classes: Classes of the run with no counterpart in the checkpoint.
        dropped_classes: Classes of the checkpoint with no counterpart in the run.
        embedded_classes: How many class embeddings the run's text encoder built (0 for a text-free model).
    """

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    by_class: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)
    matched: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    new_classes: list[str] = dataclasses.field(default_factory=list)
    dropped_classes: list[str] = dataclasses.field(default_factory=list)
    embedded_classes: int = 0

    def describe(self, limit: int = 4) -> str:
        """The report as a few lines: counts and the first `limit` names of each kind."""
        lines = [f"Initialised from {self.source}:"]
        lines.append(f"  loaded   {len(self.loaded):4d} tensors{_by_module(self.loaded)}")
        if self.by_class:
            lines.append(
                f"  by class {len(self.by_class):4d} tensors ({len(self.matched)} classes copied by name, "
                f"{len(self.new_classes)} initialised){_names(self.by_class, limit)}"
            )
        lines.append(f"  new      {len(self.new):4d} tensors, as initialised{_names(self.new, limit)}")
        lines.append(f"  dropped  {len(self.dropped):4d} tensors of the checkpoint{_names(self.dropped, limit)}")
        shared = sum(1 for run_name, saved_name in self.matched if run_name == saved_name)
        lines.append(
            f"  classes: {len(self.matched)} shared with the checkpoint"
            + (f" ({len(self.matched) - shared} up to case or spacing)" if shared < len(self.matched) else "")
            + f", {len(self.new_classes)} new{_names(self.new_classes, limit)}, "
            f"{len(self.dropped_classes)} dropped{_names(self.dropped_classes, limit)}"
        )
        if self.embedded_classes:
            lines.append(f"  class embeddings: built from the run's {self.embedded_classes} class names")
        return "\n".join(lines)


def _names(names: Sequence[str], limit: int) -> str:
    if not names:
        return ""
    return ": " + ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _by_module(names: Sequence[str]) -> str:
    """How many of `names` each top-level part holds, as " (backbone 180, decoder 30, ...)"."""
    counts: dict[str, int] = {}
    for name in names:
        part = name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + 1
    return " (" + ", ".join(f"{part} {count}" for part, count in counts.items()) + ")" if counts else ""


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


def match_classes(run_classes: Sequence[str], saved_classes: Sequence[str]) -> dict[int, int]:
    """{index in `run_classes`: index in `saved_classes`} of the names that match, case and whitespace aside."""
    saved = {_normalise(name): index for index, name in enumerate(saved_classes)}
    return {index: saved[_normalise(name)] for index, name in enumerate(run_classes) if _normalise(name) in saved}


def init_from_checkpoint(model: SegmentationModel, path: str | os.PathLike[str]) -> TransferReport:
    """Copy into `model` the weights of the checkpoint at `path` that fit it (`transfer_weights`).

    Args:
        model: The model to start, built for the run's classes.
        path: A checkpoint folder, a `.safetensors` file or a Lightning `.ckpt` (`read_saved_model`).

    Returns:
        What was loaded, initialised and dropped.

    Raises:
        CheckpointError: The checkpoint cannot be read, or holds another method or backbone, or nothing in it fits.
    """
    saved_config, state = read_saved_model(path)
    try:
        saved = ModelConfig.from_saved_dict({**saved_config, "pretrained": False})
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: invalid model config ({error}); was it written by a newer bridgeseg?"
        ) from error
    config = model.config
    for key, what in (("method", "model"), ("backbone", "backbone")):
        theirs, ours = getattr(saved, key), getattr(config, key)
        if theirs != ours:
            raise CheckpointError(
                f"--model.init_from {path}: holds a '{theirs}' {what}, this run trains '{ours}'; fine-tuning keeps "
                f"the {key} (nothing else would fit), so set --model.net.{key} {theirs} or start from another "
                "checkpoint"
            )
    try:
        saved_classes = validate_class_names(saved.classes)
    except ValueError as error:
        raise CheckpointError(f"{path}: invalid class list in the checkpoint ({error})") from error
    report = transfer_weights(model, state, saved_classes, str(path))
    if not report.loaded and not report.by_class:
        raise CheckpointError(
            f"--model.init_from {path}: none of its {len(state)} weights fits this run's model (the options "
            "differ too much); start from a checkpoint trained with the same model options"
        )
    return report


def transfer_weights(
    model: SegmentationModel, state: dict[str, Tensor], saved_classes: Sequence[str], source: str = "state dict"
) -> TransferReport:
    """Copy the weights of `state` that fit `model`, class-indexed weights class by class.

    Args:
        model: The model to start; its weights that nothing fits are left as they are.
        state: A segmentor's state dict, trained on `saved_classes`.
        saved_classes: The classes of `state`, in label order.
        source: Where `state` came from, for the report.

    Returns:
        The report.
    """
    report = TransferReport(source)
    matches = match_classes(model.classes, saved_classes)
    report.matched = [(model.classes[run], saved_classes[saved]) for run, saved in matches.items()]
    report.new_classes = [name for index, name in enumerate(model.classes) if index not in matches]
    matched_saved = set(matches.values())
    report.dropped_classes = [name for index, name in enumerate(saved_classes) if index not in matched_saved]
    if model.uses_text:
        report.embedded_classes = model.num_classes
    class_indexed = model.class_indexed_weights()
    target = model.state_dict()
    updates: dict[str, Tensor] = {}
    for name, current in target.items():
        if name == _CLASS_EMBEDDINGS:
            continue
        if name not in state:
            report.new.append(name)
            continue
        saved = state[name]
        if name in class_indexed:
            dim, start = class_indexed[name]
            copied = _copy_by_class(current, saved, dim, start, model.num_classes, len(saved_classes), matches)
            if copied is None:
                report.new.append(name)
                report.dropped.append(f"{name} (shape {list(saved.shape)})")
            else:
                updates[name] = copied
                report.by_class.append(name)
        elif saved.shape == current.shape:
            updates[name] = saved
            report.loaded.append(name)
        else:
            report.new.append(name)
            report.dropped.append(f"{name} (shape {list(saved.shape)})")
    report.dropped += [name for name in state if name not in target and name != _CLASS_EMBEDDINGS]
    with torch.no_grad():
        for name, tensor in updates.items():
            target[name].copy_(tensor.to(dtype=target[name].dtype))
    return report


def _copy_by_class(
    current: Tensor,
    saved: Tensor,
    dim: int,
    start: int,
    num_classes: int,
    num_saved_classes: int,
    matches: dict[int, int],
) -> Tensor | None:
    """`current` with the saved slices of the matched classes and the saved class-free parts; None if the
    class-free parts do not have the same size (the model options differ)."""
    expected = list(current.shape)
    expected[dim] += num_saved_classes - num_classes
    if list(saved.shape) != expected:
        return None
    result = current.detach().clone()
    saved = saved.to(dtype=result.dtype)
    after = current.shape[dim] - start - num_classes  # class-free entries after the class slices
    result.narrow(dim, 0, start).copy_(saved.narrow(dim, 0, start))
    result.narrow(dim, start + num_classes, after).copy_(saved.narrow(dim, start + num_saved_classes, after))
    for run_index, saved_index in matches.items():
        result.narrow(dim, start + run_index, 1).copy_(saved.narrow(dim, start + saved_index, 1))
    return result
