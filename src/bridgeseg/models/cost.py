"""What a model costs: parameters and FLOPs per component (backbone, fusion, decoder, head).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per multiply-add (papers
such as SegFormer and TopFormer count multiply-adds: halve our figures to compare) and only matrix products,
convolutions and attention; element-wise ops, norms and interpolation are not counted.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

COMPONENTS = ("backbone", "fusion", "decoder", "head")


def component_of(name: str) -> str:
    """The component a top-level submodule belongs to; anything not listed counts as the head."""
    top = name.split(".", 1)[0]
    if top == "text_encoder":
        return "text_encoder"
    if top.startswith("fusion"):  # fusion and, with two levels, fusion_c4
        return "fusion"
    return top if top in COMPONENTS else "head"


@dataclasses.dataclass
class CostReport:
    """Parameters and FLOPs of one model at one input size.

    Attributes:
        params: Parameters per component (all of them, trainable or not), without the text encoder.
        flops: FLOPs per component for one image (2 per multiply-add).
        trainable_params: Parameters that receive gradients.
        text_encoder_params: Parameters of the frozen text encoder (0 when not loaded or not used); not needed
            at inference, where the class embeddings are cached.
        image_size: (height, width) of the input.
        num_classes: Classes the FLOPs were counted for.
    """

    params: dict[str, int]
    flops: dict[str, int]
    trainable_params: int
    text_encoder_params: int
    image_size: tuple[int, int]
    num_classes: int

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"total_params": self.total_params, "total_flops": self.total_flops}


def count_parameters(model: nn.Module) -> tuple[dict[str, int], int, int]:
    """Parameters per component (text encoder apart), trainable parameters, and text-encoder parameters."""
    params = dict.fromkeys(COMPONENTS, 0)
    text_params = 0
    for name, parameter in model.named_parameters():
        component = component_of(name)
        if component == "text_encoder":
            text_params += parameter.numel()
        else:
            params[component] += parameter.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return params, trainable, text_params


@torch.no_grad()
def cost_report(model: nn.Module, image_size: int | tuple[int, int] = 512) -> CostReport:
    """Count parameters and FLOPs of `model` for one image, per component.

    Args:
        model: A segmentor (its `forward(images)` is counted, in eval mode, with its own classes).
        image_size: Input side or (height, width).

    Returns:
        The report.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.rand(1, 3, height, width, device=device))
    finally:
        model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = counts.get("Global", 0)
    root = type(model).__name__ + "."
    flops = dict.fromkeys(COMPONENTS, 0)
    for component in ("backbone", "fusion", "decoder"):
        # A container (e.g. a ModuleDict) is never called itself: sum its shallowest called descendants.
        paths = [name[len(root) :] for name in counts if name.startswith(root)]
        paths = [p for p in paths if p == component or p.startswith(component + ".")]
        if paths:
            depth = min(p.count(".") for p in paths)
            flops[component] = sum(counts[root + p] for p in paths if p.count(".") == depth)
    # Everything else (classifier, cosine logits, score maps) is the head.
    flops["head"] = total - flops["backbone"] - flops["fusion"] - flops["decoder"]
    params, trainable, text_params = count_parameters(model)
    num_classes = getattr(model, "num_classes", 0)
    return CostReport(params, flops, trainable, text_params, (height, width), num_classes)


def format_cost_table(reports: dict[str, CostReport]) -> str:
    """A Markdown table: one row per model, parameters in millions and GFLOPs per component."""
    header = (
        "| model | params (M) | trainable (M) | text encoder (M) | GFLOPs | backbone | fusion | decoder | head |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for label, report in reports.items():
        parts = " | ".join(f"{report.flops[c] / 1e9:.2f}" for c in COMPONENTS)
        rows.append(
            f"| {label} | {report.total_params / 1e6:.2f} | {report.trainable_params / 1e6:.2f} | "
            f"{report.text_encoder_params / 1e6:.2f} | {report.total_flops / 1e9:.2f} | {parts} |"
        )
    return "\n".join(rows)
