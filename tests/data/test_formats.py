"""Annotation-tool exports: every format read back equals the masks it was made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridgeseg.data import create_dataset
from bridgeseg.data.formats import FORMATS, detect_format, read_annotations
from bridgeseg.errors import DatasetNotFoundError
from tests.data.conftest import EXACT, FORMAT_OF, NAMES, WRITERS, Sample


def _agreement(source: np.ndarray, read: np.ndarray) -> dict[int, float]:
    """Per class: pixels both call that class over pixels either does (1.0 = identical)."""
    out = {}
    for label in np.unique(np.concatenate([source.ravel(), read.ravel()])).tolist():
        both = ((source == label) & (read == label)).sum()
        either = ((source == label) | (read == label)).sum()
        out[label] = both / either
    return out


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_format_reads_back_its_masks(writer: str, exports: dict[str, Path], samples: list[Sample]) -> None:
    root = exports[writer]
    assert detect_format(root) == FORMAT_OF.get(writer, writer)
    annotations = read_annotations(root)
    assert annotations.classes == ["background", *NAMES]
    assert not annotations.problems
    truth = {sample.name: sample.mask for sample in samples}
    assert len(annotations.entries) == len(samples)
    for entry in annotations.entries:
        assert not entry.problems, entry.problems
        info = annotations.image_info(entry)
        mask = annotations.render(entry, info.size)
        source = truth[Path(entry.key).stem]
        assert mask.shape == source.shape
        agreement = _agreement(source, mask)
        minimum = 1.0 if writer in EXACT else 0.99
        assert min(agreement.values()) >= minimum, (entry.key, agreement)


def test_detection_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DatasetNotFoundError) as error:
        detect_format(tmp_path)
    message = str(error.value)
    for name in FORMATS:
        assert name in message
    assert "folder" in message and "docs/your-data.md" in message


def test_dataset_gives_the_same_samples_as_every_dataset(exports: dict[str, Path]) -> None:
    dataset = create_dataset("annotations", exports["labelme"], "train", val_fraction=0.5, seed=0)
    sample = dataset[0]
    assert sample["image"].shape[0] == 3 and sample["image"].dtype.is_floating_point
    assert sample["mask"].shape == sample["image"].shape[1:]
    assert dataset.classes == ["background", *NAMES]
