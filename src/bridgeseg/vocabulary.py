"""Class lists: the one parser, validator and closed-set check, and the ignore label.

Every caller (the models, the text encoders, the command line, the Python API, the web app and the ONNX runtime)
checks class names here, so "cat " and "cat" mean the same class everywhere and every refusal reads the same.

A name that holds a comma is quoted as in a CSV file, and one length cap holds for every caller, so a name
that draws a 50,000-pixel-wide legend is refused wherever it comes from.

Example:
    >>> parse_class_list("sky, road, car")
    ['sky', 'road', 'car']
    >>> parse_class_list('"salt, pepper", cat')
    ['salt, pepper', 'cat']
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

__all__ = [
    "IGNORE_INDEX",
    "MAX_CLASSES",
    "MAX_CLASS_NAME_LENGTH",
    "check_class_count",
    "check_vocabulary",
    "describe_classes",
    "parse_class_list",
    "validate_class_names",
]

IGNORE_INDEX = 255
"""Mask label of pixels that carry no class: never counted in the loss or the metrics."""
MAX_CLASS_NAME_LENGTH = 100
"""Longest class name accepted anywhere (the CLI, the Python API, the web app, the models), in characters."""
MAX_CLASSES = 1000
"""Most class names accepted in one list (the CLI, the Python API, the web app). 1000 admits every standard
segmentation vocabulary with room to spare: ADE20K's 150, COCO-Stuff's 171, PASCAL-Context's 459 and ADE20K-full's
847 (the largest open-vocabulary benchmark); a list is embedded once by the text encoder (about a second per few
hundred names on a CPU), so the cap keeps that bounded too. What the names cost per image is bounded separately,
by the logits budget of `bridgeseg.budget`."""


def validate_class_names(classes: Sequence[str]) -> list[str]:
    """Check a class list and return it with surrounding whitespace stripped from each name.

    Args:
        classes: Class names in label-index order.

    Returns:
        The names, stripped.

    Raises:
        ValueError: `classes` is one string, empty, or has a non-string, blank, duplicate or too long name
            (duplicates are compared after stripping: "cat " is "cat"; at most `MAX_CLASS_NAME_LENGTH` characters).
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
    _check_lengths(names, MAX_CLASS_NAME_LENGTH)
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates}; each class needs a distinct name")
    return names


def check_class_count(count: int, max_classes: int = MAX_CLASSES) -> None:
    """Refuse a list of more than `max_classes` names, before any is embedded.

    Raises:
        ValueError: Too many names.
    """
    if count > max_classes:
        raise ValueError(f"{count} class names, over the {max_classes} accepted in one list; give fewer classes")


def _check_lengths(names: Sequence[str], max_length: int) -> None:
    long_names = [name for name in names if len(name) > max_length]
    if long_names:
        raise ValueError(
            f"class name {long_names[0][:40]!r}... is {len(long_names[0])} characters long, over the {max_length} "
            "accepted; shorten it"
        )


def _csv_problem(error: csv.Error, max_length: int) -> str:
    """What is wrong with a class list the CSV reader refused, and how to write it."""
    quoting = """quote a name that holds a comma as '"salt, pepper", cat'"""
    if "field larger than field limit" in str(error):
        return f"a class name is over {csv.field_size_limit()} characters long; give names of at most {max_length}"
    if "unexpected end of data" in str(error):
        return f"the class list has a double quote that is never closed; close it or remove it ({quoting})"
    return f"the class list is not comma-separated names ({error}); {quoting}"


def parse_class_list(
    text: str | None, max_classes: int = MAX_CLASSES, max_length: int = MAX_CLASS_NAME_LENGTH
) -> list[str] | None:
    """Split a comma-separated class list (`--classes`, the web form, the Python API) and validate it.

    Names are separated by commas; a name that holds a comma is put in double quotes, as in a CSV file
    (``'"salt, pepper", cat'``).

    Args:
        text: E.g. ``"sky, road, car"``; None (not given) stays None, meaning the model's own classes.
        max_classes: Most names accepted (at most `MAX_CLASSES`).
        max_length: Longest name accepted, in characters (at most `MAX_CLASS_NAME_LENGTH`).

    Returns:
        The names, or None.

    Raises:
        ValueError: The list is empty, a name is blank (a doubled or trailing comma), repeated or too long, a
            double quote is unbalanced, or there are too many names.
    """
    if text is None:
        return None
    if "\n" in text or "\r" in text:
        raise ValueError("the class list holds a line break; give the names on one line, separated by commas")
    try:
        # strict: an unbalanced quote is an error, not one name that swallows the rest of the list.
        fields = next(csv.reader([text], skipinitialspace=True, strict=True), [""])
    except csv.Error as error:
        raise ValueError(_csv_problem(error, max_length)) from error
    names = [name.strip() for name in fields]
    if not any(names):
        raise ValueError("the class list is empty; give at least one class name")
    blank = [position for position, name in enumerate(names, start=1) if not name]
    if blank:
        plural = len(blank) > 1
        raise ValueError(
            f"class name{'s' if plural else ''} {', '.join(map(str, blank))} of {len(names)} "
            f"{'are' if plural else 'is'} blank; remove the doubled or trailing comma"
        )
    check_class_count(len(names), min(max_classes, MAX_CLASSES))
    _check_lengths(names, min(max_length, MAX_CLASS_NAME_LENGTH))
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
