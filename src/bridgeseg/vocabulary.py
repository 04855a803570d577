"""Class lists: the one parser, validator and closed-set check, and the ignore label.

Every caller (the models, the text encoders, the command line, the Python API, the web app and the ONNX runtime)
checks class names here, so "cat " and "cat" mean the same class everywhere and every refusal reads the same.

Example:
    >>> parse_class_list("sky, road, car")
    ['sky', 'road', 'car']
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IGNORE_INDEX", "check_vocabulary", "describe_classes", "parse_class_list", "validate_class_names"]

IGNORE_INDEX = 255
"""Mask label of pixels that carry no class: never counted in the loss or the metrics."""


def validate_class_names(classes: Sequence[str]) -> list[str]:
    """Check a class list and return it with surrounding whitespace stripped from each name.

    Args:
        classes: Class names in label-index order.

    Returns:
        The names, stripped.

    Raises:
        ValueError: `classes` is one string, empty, or has a non-string, blank or duplicate name (duplicates are
            compared after stripping: "cat " is "cat").
    """
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of names, got the string {classes!r}; split it on commas first")
    names = list(classes)
    if not names:
        raise ValueError("the class list is empty; give at least one class name")
    wrong_type = [index for index, name in enumerate(names) if not isinstance(name, str)]
    if wrong_type:
        raise ValueError(f"class names at positions {wrong_type} are not strings; pass names as strings")
    names = [name.strip() for name in names]
    blank = [index for index, name in enumerate(names) if not name]
    if blank:
        raise ValueError(f"class names at positions {blank} are blank; remove them or give them a name")
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates}; each class needs a distinct name")
    return names


def parse_class_list(
    text: str | None, max_classes: int | None = None, max_length: int | None = None
) -> list[str] | None:
    """Split a comma-separated class list (`--classes`, the web form) and validate it.

    Args:
        text: E.g. ``"sky, road, car"``; None (not given) stays None, meaning the model's own classes.
        max_classes: Most names accepted, if capped.
        max_length: Longest name accepted, in characters, if capped.

    Returns:
        The names, or None.

    Raises:
        ValueError: The list is empty, a name is blank (a doubled or trailing comma), repeated or too long, or
            there are too many.
    """
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise ValueError("the class list is empty; give at least one class name")
    blank = [position for position, name in enumerate(names, start=1) if not name]
    if blank:
        plural = len(blank) > 1
        raise ValueError(
            f"class name{'s' if plural else ''} {', '.join(map(str, blank))} of {len(names)} "
            f"{'are' if plural else 'is'} blank; remove the doubled or trailing comma"
        )
    if max_classes is not None and len(names) > max_classes:
        raise ValueError(f"{len(names)} class names; give at most {max_classes}")
    long_names = [name for name in names if max_length is not None and len(name) > max_length]
    if long_names:
        raise ValueError(f"class name {long_names[0][:40]!r}... is longer than {max_length} characters")
    return validate_class_names(names)


def describe_classes(classes: Sequence[str], limit: int = 5) -> str:
    """The first `limit` names, comma-separated, with ", ..." when there are more."""
    return ", ".join(classes[:limit]) + (", ..." if len(classes) > limit else "")


def check_vocabulary(
    classes: Sequence[str] | None,
    own: Sequence[str],
    open_vocabulary: bool,
    model: str,
    hint: str = "use a 'bridge' or 'lseg' model for an open vocabulary",
) -> list[str]:
    """The class list a model will segment with, refusing new names for a closed-set model.

    Args:
        classes: The names asked for; None means the model's own.
        own: The model's classes, in index order.
        open_vocabulary: Whether the model takes other class lists.
        model: How to name the model in the message, e.g. "'fpn'" or "model.onnx".
        hint: What to do instead, ending the message.

    Returns:
        The validated names.

    Raises:
        ValueError: Invalid names, or new names for a closed-set model.
    """
    if classes is None:
        return list(own)
    names = validate_class_names(classes)
    if names != list(own) and not open_vocabulary:
        raise ValueError(
            f"{model} is closed-set: it takes only its own {len(own)} classes ({describe_classes(own)}), not another "
            f"class list; {hint}"
        )
    return names
