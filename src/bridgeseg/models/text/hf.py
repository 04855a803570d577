"""transformers text towers (``hf:<hub id or local dir>``): CLIP text models and sentence encoders.

CLIP configs (``model_type`` ``clip`` or ``clip_text_model``) give the projected text embedding of
``CLIPTextModelWithProjection``; anything else is a sentence encoder pooled as its ``1_Pooling/config.json`` says
(mean pooling by default), as sentence-transformers does. Local folders never trigger a hub lookup.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridgeseg.models.text.base import CONTEXT_PLACEHOLDER, TextEncoder

__all__ = ["SentenceTextEncoder", "create_hf_text_encoder", "load_hf_sentence_tower", "sentence_pooling"]

logger = logging.getLogger(__name__)


class SentenceTextEncoder(TextEncoder):
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
        placeholder_id = int(self._tokenize([CONTEXT_PLACEHOLDER])["input_ids"][0, 1])
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


def create_hf_text_encoder(target: str, templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
    """Build a transformers text encoder from a hub id or a local folder (``hf:<target>``).

    Raises:
        ValueError: The checkpoint lacks CLIP text weights, or learnable prompt context is asked of a sentence
            encoder.
    """
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
    tower, tokenizer = load_hf_sentence_tower(source, **hub_kwargs)
    pooling, max_length = sentence_pooling(source, is_local, tower, tokenizer)
    return SentenceTextEncoder(encoder_id, tower, tokenizer, pooling, max_length, templates)


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


def load_hf_sentence_tower(source: str, **hub_kwargs: Any) -> tuple[nn.Module, Any]:
    import transformers

    with _without_progress_bars(local=bool(hub_kwargs.get("local_files_only"))):
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **hub_kwargs)
        tower = transformers.AutoModel.from_pretrained(source, dtype=torch.float32, **hub_kwargs)
    return tower.eval(), tokenizer


def sentence_pooling(source: str, is_local: bool, tower: nn.Module, tokenizer: Any) -> tuple[str, int]:
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
