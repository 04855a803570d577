"""What the comparison runs: its studies, datasets, ablation variants and budget, and the plan of runs they make.

A run's name is its identity (method, backbone, dataset, budget, variant, seed): studies that need the same run
share it, and a record written under that name is never redone (`_compare_pool`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RAW = RESULTS / "compare.raw"
PARAPHRASES = REPO / "benchmarks" / "paraphrases.json"

METHODS = ("bridge", "denseclip", "lseg", "fpn")
LANGUAGE_METHODS = ("bridge", "lseg")
# The `peers` study: classic light heads (closed set, no text) on the decision backbone, as the peers' own models
# (LR-ASPP on MobileNetV3, SegFormer-B0) have no offline ImageNet weights.
LIGHT_HEADS = ("lraspp", "segformer")
DECISION_BACKBONE = ("efficientnet_lite0", True)  # offline ImageNet weights
SCRATCH_BACKBONES = (("mobilenetv2_100", False), ("resnet18", False))  # no network: no pretrained weights here

# The two mosaics. `mosaic` is the demo's data (generate_mosaic's defaults). `mosaic_hard` is generated with another
# seed and harder settings, so no design is tuned to one dataset: 15 classes instead of 13 (the two CC BY photos),
# 8-14 regions per image instead of 4-8, twice the boundary jitter (other, more ragged region shapes), stronger
# colour jitter and noise, rotations up to 90 degrees.
DATASETS: dict[str, dict[str, Any]] = {
    "mosaic": {"num_train": 400, "num_val": 100, "size": 192, "seed": 0},
    "mosaic_hard": {
        "num_train": 400,
        "num_val": 100,
        "size": 192,
        "seed": 1,
        "include_cc_by": True,
        "num_regions": [8, 14],
        "boundary_jitter": 0.12,
        "colour_jitter": 0.8,
        "noise": 0.05,
        "max_rotation": 90.0,
    },
}
DATASETS_ORDER = tuple(DATASETS)
# Held-out classes of the generalised zero-shot protocol (on `mosaic`): one texture, one object, one scene-like
# class, fixed before any run.
HELDOUT_CLASSES = ("gravel", "cat", "galaxies")
HELDOUT_DATASET = "mosaic_heldout"
# Vocabulary subsets: this many fixed random halves of the classes.
NUM_SUBSETS = 5

# Ablation: variant -> (method, options that differ from the default model). The default is the decision run of
# the same seed on `mosaic`.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # The three fixes of issue 11 (identity start, kept C5, pixel projection before the cosine): all off, one off.
    "legacy": ("bridge", {"identity_start": False, "keep_c5": False, "pixel_projection": False}),
    "no_identity_start": ("bridge", {"identity_start": False}),
    "c5_replaced": ("bridge", {"keep_c5": False}),
    "no_pixel_projection": ("bridge", {"pixel_projection": False}),
    "lseg_no_pixel_projection": ("lseg", {"pixel_projection": False}),
    # Four fusion blocks collapsed before the identity start; with and without it.
    "blocks_4": ("bridge", {"fusion_blocks": 4}),
    "blocks_4_no_identity_start": ("bridge", {"fusion_blocks": 4, "identity_start": False}),
    # Which direction of the bridge buys what (the paraphrase edge over LSeg in particular).
    "bridge_none": ("bridge", {"bridge": "none"}),
    "bridge_v2t": ("bridge", {"bridge": "v2t"}),
    "bridge_t2v": ("bridge", {"bridge": "t2v"}),
    "blocks_1": ("bridge", {"fusion_blocks": 1}),
    "no_cnn_branch": ("bridge", {"cnn_branch": False}),
    "concat_score_map": ("bridge", {"concat_score_map": True}),
    "two_levels": ("bridge", {"fusion_levels": 2}),
    "slim_full_projection": ("bridge", {"fusion_dim": 128, "full_projection": True}),
    "aux_0": ("bridge", {"aux_weight": 0.0}),
    "aux_1": ("bridge", {"aux_weight": 1.0}),
    # A speed option, not a fusion switch: its mIoU cost, so users can choose.
    "decoder_stride_8": ("bridge", {"decoder_stride": 8}),
}
# Variants that answer their question against another variant rather than the default (same seeds): the identity
# start's effect at four blocks is `blocks_4_no_identity_start - blocks_4`.
ABLATION_REFERENCES = {"blocks_4_no_identity_start": "blocks_4"}
STUDIES = ("decision", "curve", "heldout", "ablation", "scratch", "peers")
# The model every run starts from, under a variant's own options: the library's defaults as they were when this
# comparison ran, pinned so that a later change of a library default does not change what a committed record means.
# The ablation then took the pixel projection out of the library's defaults (the `no_pixel_projection` rows).
BENCHMARK_MODEL: dict[str, Any] = {"pixel_projection": True}


@dataclasses.dataclass(frozen=True)
class Budget:
    """A training budget.

    Attributes:
        iterations: Optimiser steps.
        batch_size: Images per step.
        crop_size: Training crop side (the mosaic images are 192 px; validation is on whole images).
        lr: AdamW base learning rate (the head's).
        scale_range: Random resize range of the training augmentation.
        threads: Torch threads per run.
    """

    iterations: int = 600
    batch_size: int = 8
    crop_size: int = 128
    lr: float = 1e-3
    scale_range: tuple[float, float] = (0.5, 2.0)
    threads: int = 1

    @property
    def warmup_iters(self) -> int:
        """Linear warmup, then poly 0.9: the demo's share of the schedule (30 of 600)."""
        return max(1, self.iterations // 20)

    @property
    def tag(self) -> str:
        """What sets this budget apart in a run's name (the default parts are left out)."""
        default = Budget()
        parts = [f"{self.iterations}it"]
        if self.batch_size != default.batch_size:
            parts.append(f"b{self.batch_size}")
        if self.crop_size != default.crop_size:
            parts.append(f"c{self.crop_size}")
        if self.lr != default.lr:
            parts.append(f"lr{self.lr:g}")
        if tuple(self.scale_range) != default.scale_range:
            parts.append(f"sc{self.scale_range[0]:g}-{self.scale_range[1]:g}")
        return "_".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"warmup_iters": self.warmup_iters, "scale_range": list(self.scale_range)}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run; its name is its identity, so studies that need the same run share it."""

    method: str
    backbone: str
    pretrained: bool
    dataset: str
    seed: int
    budget: Budget
    variant: str = "default"
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}_{self.backbone}_{self.dataset}_{self.budget.tag}_{self.variant}_s{self.seed}"


@dataclasses.dataclass
class Plan:
    """The runs of every selected study, in execution order, with the study each belongs to."""

    studies: dict[str, list[Run]]

    def ordered_runs(self) -> list[Run]:
        seen: dict[str, Run] = {}
        for runs in self.studies.values():
            for run in runs:
                seen.setdefault(run.name, run)
        return list(seen.values())


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The decision budget the command line asks for."""
    return Budget(args.iterations, args.batch_size, args.crop_size, args.lr, tuple(args.scale_range), args.threads)


def plan(args: argparse.Namespace) -> Plan:
    """Every run of the selected studies, interleaved seed by seed so a partial comparison has complete pairs."""
    budget = budget_from_args(args)
    backbone, pretrained = DECISION_BACKBONE
    studies: dict[str, list[Run]] = {}
    for study in args.studies:
        runs: list[Run] = []
        if study == "decision":
            for dataset in args.datasets:
                for seed in args.seeds:
                    runs += [Run(method, backbone, pretrained, dataset, seed, budget) for method in args.methods]
        elif study == "curve":
            for iterations in args.curve_iterations:
                curve_budget = dataclasses.replace(budget, iterations=iterations)
                for seed in args.curve_seeds:
                    runs += [
                        Run(m, backbone, pretrained, args.datasets[0], seed, curve_budget) for m in ("bridge", "fpn")
                    ]
        elif study == "ablation":
            # Variant by variant, so that a partial ablation has complete rows (the default runs are the
            # decision's); `legacy` first: it says what the fixes bought.
            for variant, (method, options) in ABLATIONS.items():
                if args.variants and variant not in args.variants:
                    continue
                opts = tuple(sorted(options.items()))
                for seed in args.ablation_seeds:
                    runs.append(Run(method, backbone, pretrained, args.datasets[0], seed, budget, variant, opts))
        elif study == "heldout":
            for seed in args.heldout_seeds:
                runs += [Run(m, backbone, pretrained, HELDOUT_DATASET, seed, budget) for m in LANGUAGE_METHODS]
        elif study == "scratch":
            for seed in args.scratch_seeds:
                for name, scratch_pretrained in SCRATCH_BACKBONES:
                    runs += [Run(m, name, scratch_pretrained, "mosaic", seed, budget) for m in args.methods]
        elif study == "peers":
            for seed in args.seeds:
                runs += [Run(m, backbone, pretrained, args.datasets[0], seed, budget) for m in LIGHT_HEADS]
        studies[study] = runs
    return Plan(studies)
