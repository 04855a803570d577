"""The text-encoder interface: a frozen tower that embeds class names, template ensembling and the per-name cache.

Prompt templates are ensembled as open_clip's zero-shot classifier does: each template is filled with the name and
embedded, the embeddings are normalised, averaged and normalised again. Embeddings are cached per (encoder id,
templates, class name), so a fixed vocabulary costs one tower pass per name for the whole run.

CLIP-style encoders optionally learn a prompt context (CoOp / DenseCLIP): ``prompt_context=n`` replaces the
templates by ``"X X ... X <name>."`` whose ``n`` placeholder token embeddings are trainable vectors; they are then
the only parameters of the encoder that receive gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bridgeseg.vocabulary import validate_class_names

__all__ = ["CONTEXT_PLACEHOLDER", "DEFAULT_TEMPLATES", "TextEncoder"]

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
CONTEXT_PLACEHOLDER = "X"


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
            placeholders = " ".join([CONTEXT_PLACEHOLDER] * prompt_context)
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
