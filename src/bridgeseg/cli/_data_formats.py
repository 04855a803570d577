"""`bridgeseg data check|convert|split PATH`: users' own annotations (see docs/your-data.md).

bridgeseg data check PATH [--format auto] [--chart FILE]     # counts, class table, sizes, every problem; exit 2
bridgeseg data convert PATH --to folder --out DIR            # index PNGs + classes.txt
bridgeseg data split PATH [--val-fraction 0.2] [--seed 0]    # PATH/splits/{train,val}.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

_FORMAT_CHOICES = ("auto", "coco", "labelme", "cvat", "label_studio", "palette", "yolo")


def add_parsers(kinds: argparse._SubParsersAction) -> None:
    check = kinds.add_parser("check", help="check a dataset or an annotation export: classes, sizes, every problem")
    _common(check)
    check.add_argument("--chart", help="write a PNG bar chart of the classes here (needs matplotlib)")
    check.set_defaults(run=run_check)

    convert = kinds.add_parser("convert", help="convert an annotation export to the folder layout")
    _common(convert)
    convert.add_argument("--to", choices=["folder"], default="folder", help="output layout")
    convert.add_argument("--out", required=True, help="output folder")
    _split_options(convert)
    convert.set_defaults(run=run_convert)

    split = kinds.add_parser("split", help="write a stratified train/val split of an export without one")
    _common(split)
    _split_options(split)
    split.add_argument("--out", help="folder for train.txt and val.txt (default: PATH/splits)")
    split.set_defaults(run=run_split)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the export's folder (or a folder layout, for check)")
    parser.add_argument("--format", choices=_FORMAT_CHOICES, default="auto", help="export format (default: detect)")
    parser.add_argument(
        "--background",
        choices=["class", "ignore"],
        default="class",
        help="pixels no shape covers: a 'background' class, or ignored (vector formats)",
    )


def _split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of validation images (no split given)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")


def _fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"--val-fraction must be between 0 and 1 (exclusive), got {value}")
    return value


def run_check(args: argparse.Namespace) -> int:
    from bridgeseg.data.formats import is_folder_layout
    from bridgeseg.data.formats.check import save_chart

    if args.format == "auto" and is_folder_layout(args.path):
        report = _check_folder(Path(args.path))
    else:
        report = _check_export(args)
    print(report.render())
    if args.chart:
        written = save_chart(report, args.chart)
        print(f"chart: {written}" if written else "chart: not written (matplotlib is not installed)")
    return 2 if report.problems else 0


def _check_export(args: argparse.Namespace):  # -> DataCheckReport
    from bridgeseg.data.formats import read_annotations
    from bridgeseg.data.formats.check import check_annotations
    from bridgeseg.data.formats.split import split_entries
    from bridgeseg.errors import DatasetError

    annotations = read_annotations(args.path, format=args.format, background=args.background)
    try:
        splits = {name: len(entries) for name, entries in split_entries(annotations).items()}
    except DatasetError:
        splits = {"unsplit": len(annotations.entries)}
    return check_annotations(annotations, splits)


def _check_folder(root: Path):  # -> DataCheckReport
    from bridgeseg.data.datasets import FolderDataset
    from bridgeseg.data.formats.check import check_dataset, merge_reports
    from bridgeseg.errors import DatasetError

    reports, problems = [], []
    for split in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
        try:
            reports.append(check_dataset(FolderDataset(root, split)))
        except DatasetError as error:
            problems.append(str(error))
    return merge_reports(f"{root} (folder)", reports, problems)


def run_convert(args: argparse.Namespace) -> int:
    from bridgeseg.data.formats import read_annotations
    from bridgeseg.data.formats.convert import convert_to_folder

    annotations = read_annotations(args.path, format=args.format, background=args.background)
    out, written = convert_to_folder(annotations, args.out, val_fraction=_fraction(args.val_fraction), seed=args.seed)
    counts = ", ".join(f"{split} {count}" for split, count in written.items())
    print(f"wrote {out} ({annotations.format} → folder: {counts} images, {annotations.num_classes} classes)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from bridgeseg.data.formats import read_annotations
    from bridgeseg.data.formats.split import SPLIT_DIR, stratified_split, write_split_lists

    annotations = read_annotations(args.path, format=args.format, background=args.background)
    keys = [entry.key for entry in annotations.entries]
    labels = [annotations.labels_present(entry) for entry in annotations.entries]
    train, val = stratified_split(keys, labels, _fraction(args.val_fraction), args.seed)
    folder = write_split_lists(args.out or Path(args.path) / SPLIT_DIR, {"train": train, "val": val})
    print(f"wrote {folder}/train.txt ({len(train)} images) and val.txt ({len(val)} images)")
    return 0
