"""open_clip text towers (``openclip:<arch or config .json>[:<pretrained tag or weights file>]``).

Only the text tower is built (with open_clip's own builder, so activation, norm and block options match CLIP
exactly) and only its tensors are loaded; the visual tower is never instantiated.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridgeseg.models.text.base import CONTEXT_PLACEHOLDER, TextEncoder
from bridgeseg.models.weights import (
    OPENCLIP_PREFIX,
    download_openclip_weights,
    openclip_weights_file,
    parse_openclip_spec,
    read_state_dict,
)

__all__ = ["create_openclip_text_encoder"]

logger = logging.getLogger(__name__)


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
        placeholder_id = int(self.tokenizer([CONTEXT_PLACEHOLDER])[0, 1])
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


def create_openclip_text_encoder(spec: str, templates: Sequence[str] | None, prompt_context: int) -> TextEncoder:
    """Build the text tower of an open_clip model from ``openclip:<arch or config .json>[:<tag or file>]``.

    Args:
        spec: The encoder spec.
        templates: Prompt templates; the defaults when None.
        prompt_context: Learnable context vectors; 0 for fixed templates.

    Returns:
        The frozen encoder.
    """
    from open_clip.model import _build_text_tower

    arch, pretrained = parse_openclip_spec(spec)
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
    encoder_id = f"{OPENCLIP_PREFIX}{arch}:{pretrained}" if pretrained else f"{OPENCLIP_PREFIX}{arch}"
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
    if not pretrained:
        return None, False
    weights_file = openclip_weights_file(pretrained)
    if weights_file is not None:
        return str(weights_file), False
    if arch.lower().endswith(".json"):
        raise ValueError(
            f"Pretrained tag {pretrained!r} needs a built-in open_clip architecture, not a config file; "
            "give a weights file instead."
        )
    weights_path, pretrained_cfg = download_openclip_weights(arch, pretrained)
    return weights_path, bool(pretrained_cfg.get("quick_gelu", False))


def _load_openclip_text_weights(tower: nn.Module, weights_path: str) -> None:
    """Load the text-tower tensors of an open_clip checkpoint into ``tower``, strictly.

    Whole-model checkpoints (``CLIP``: text keys at the top level; ``CustomTextCLIP``/CoCa: under ``text.``)
    and text-tower checkpoints are accepted; visual tensors are skipped, and not even read for safetensors.
    """
    expected = set(tower.state_dict())

    def text_key(key: str) -> str | None:
        key = key.removeprefix("module.")
        if key in expected:
            return key
        if key.startswith("text."):
            return key.removeprefix("text.") if key.removeprefix("text.") in expected else None
        return None

    state_dict = read_state_dict(weights_path, select=text_key)
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
