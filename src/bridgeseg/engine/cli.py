"""Deprecated: the Lightning command line is `bridgeseg.engine.lightning` (this path goes in the next release)."""

from bridgeseg._deprecated import warn_moved
from bridgeseg.engine.lightning import (  # noqa: F401
    AtomicCheckpointIO,
    BestCheckpoint,
    BridgesegCLI,
    IterationProgressBar,
    LastCheckpoint,
    checkpoint_dir,
    run_lightning_cli,
    trainer_defaults,
)

warn_moved("bridgeseg.engine.cli", "bridgeseg.engine.lightning")
