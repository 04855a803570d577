"""`bridgeseg cost`: parameters and FLOPs per component of every method on one backbone."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("cost", help="parameters and FLOPs per component of every method")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--methods", nargs="*", help="default: every method")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from bridgeseg.models import create_model, list_methods
    from bridgeseg.models.cost import cost_report, format_cost_table

    classes = [f"class {i}" for i in range(args.num_classes)]
    reports = {}
    first_with_text = None  # its text encoder and class embeddings serve every other method
    for method in args.methods or list_methods():
        embeddings = first_with_text.class_embeddings if first_with_text is not None else None
        model = create_model(
            method,
            class_embeddings=embeddings,
            backbone=args.backbone,
            text_encoder=args.text_encoder,
            classes=classes,
            pretrained=False,
        )
        if model.uses_text:
            if first_with_text is None:
                first_with_text = model
            elif model.text_encoder is None:
                model.text_encoder = first_with_text.text_encoder  # counted in its parameters, never run
        reports[f"{method} / {args.backbone}"] = cost_report(model, args.size)
    print(f"Cost at {args.size}x{args.size}, {args.num_classes} classes (FLOPs: 2 per multiply-add)")
    print(format_cost_table(reports))
