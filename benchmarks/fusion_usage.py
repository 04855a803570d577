"""How much a trained bridge fusion module changes what passes through it.

An identity-start module begins as (almost) nothing: every residual update is scaled by a learnable layer scale
that starts at 1e-4. This script reports, for a trained `bridge` model on mosaic val images, the learned layer
scales and the relative change each block makes to the pixels and to the class tokens, so a reader can tell a
bridge that is used from one that stayed the identity.

Usage:
    python benchmarks/fusion_usage.py outputs/demo/model            # the model `make demo` trains
    python benchmarks/fusion_usage.py MODEL --images data/mosaic/images/val --count 16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model folder, .safetensors or .ckpt of a `bridge` model")
    parser.add_argument("--images", default=str(REPO / "data" / "mosaic" / "images" / "val"))
    parser.add_argument("--count", type=int, default=16, help="images to average over")
    args = parser.parse_args(argv)

    import torch

    import bridgeseg
    from bridgeseg.images import load_image

    model = bridgeseg.load_model(args.model).eval()
    if model.method != "bridge":
        print(f"error: {args.model} holds a '{model.method}' model; give a 'bridge' model", file=sys.stderr)
        return 2
    paths = sorted(Path(args.images).glob("*.png"))[: args.count]
    if not paths:
        print(f"error: no .png images in {args.images}", file=sys.stderr)
        return 2
    images = torch.stack([load_image(path) for path in paths])
    changes: dict[str, tuple[float, float]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple, outputs: tuple) -> None:
            (pixels_in, tokens_in), (pixels_out, tokens_out) = inputs, outputs
            changes[name] = (
                float((pixels_out - pixels_in).norm() / pixels_in.norm()),
                float((tokens_out - tokens_in).norm() / tokens_in.norm()),
            )

        return hook

    levels = [("c5", model.fusion)] + ([("c4", model.fusion_c4)] if model.fusion_c4 is not None else [])
    for level, fusion in levels:
        for index, block in enumerate(fusion.blocks):
            block.register_forward_hook(record(f"{level} block {index}"))
    with torch.inference_mode():
        model(images)

    print(f"{args.model}: {len(paths)} images from {args.images}")
    print("\n| layer scale | mean abs | max abs |\n|---|---:|---:|")
    for name, parameter in model.named_parameters():
        if name.endswith("_scale.gamma"):
            values = parameter.detach().abs()
            print(f"| {name.removesuffix('.gamma')} | {float(values.mean()):.4f} | {float(values.max()):.4f} |")
    print("\n| block | relative change of the pixels | relative change of the class tokens |\n|---|---:|---:|")
    for name, (pixels, tokens) in changes.items():
        print(f"| {name} | {pixels:.3f} | {tokens:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
