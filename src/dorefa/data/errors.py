"""The one exception every data loader raises for a missing, corrupt or unusable data file,
and the checks loaders and training share (the folder exists, there are classes to learn)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from ..say import warning


class DataError(ValueError):
    """A data file is missing, corrupt or not in the expected format.

    The message is one line that names the file and says what was expected, so that a
    user can act on it without reading a numpy traceback.
    """


def require_folder(folder: Path, expected: str) -> None:
    """Raise DataError unless ``folder`` is a folder; ``expected`` says what it should hold."""
    if folder.is_dir():
        return
    what = "is a file, not a folder" if folder.exists() else "no such folder"
    raise DataError(f"{folder}: {what} (expected {expected})")


def require_classes(dataset, spec: str) -> None:
    """Training needs at least two classes; a data set of one (an image folder with one class
    folder, IDX labels that are all 0) loads fine but cannot train a classifier."""
    labels = getattr(dataset, "labels", None)  # in memory: IDX and the built-in sets
    seen = len(set(labels.tolist())) if labels is not None else dataset.num_classes
    if min(dataset.num_classes, seen) < 2:
        raise DataError(
            f"{spec}: {min(dataset.num_classes, seen)} class only; a classifier needs at least "
            "2 (IDX: labels 0..K-1; image folders: one folder per class)"
        )
    if dataset.num_classes > max(10, 2 * seen):  # IDX infers K from the largest label
        warning(
            f"{spec}: labels span 0..{dataset.num_classes - 1} but only {seen} values occur; "
            f"the model gets {dataset.num_classes} outputs (a stray label in the file?)"
        )


def same_name(name: object) -> str:
    """A class name as compared across splits and with a checkpoint's: one Unicode form (macOS
    writes 'é' decomposed)."""
    return unicodedata.normalize("NFC", str(name))


def _label_set(dataset) -> set[int] | None:
    labels = getattr(dataset, "labels", None)
    return None if labels is None else set(labels.tolist())


def check_splits(train, test, spec: str, subset: int | None = None) -> None:
    """What training on ``train`` (cut to ``subset`` images, if given) cannot learn: a subset
    of one class is refused (an IDX file sorted by label gives its first images all one
    label); test labels no training image has are said on stderr (IDX sizes the model by the
    largest label of both splits, so they load; the model never learns them)."""
    seen, wanted = _label_set(train), _label_set(test)
    if seen is None:
        return
    if subset is not None and len(train) >= 2 and len(seen) < 2:  # 1 image: check_images
        raise DataError(
            f"{spec}: its first {len(train)} training images (--subset {subset}) hold "
            f"{len(seen)} class only; raise --subset, or order the files so that classes mix"
        )
    unseen = sorted((wanted or set()) - seen)
    if unseen and subset is None:
        shown = ", ".join(map(str, unseen[:8])) + (", ..." if len(unseen) > 8 else "")
        warning(
            f"{spec}: test labels {shown} occur in no training image; the model never learns "
            "them (their test images count as errors)"
        )


def first_images(dataset, n: int | None, flag: str):
    """The first ``n`` items of ``dataset`` (``flag``: the option that asked for them; None:
    all). Asking for more than there are takes them all and says so on stderr."""
    if n is None:
        return dataset
    if n < 1:
        raise ValueError(f"{flag} must be a positive number of images, got {n}")
    if n > len(dataset):
        warning(
            f"{flag} {n} is more than the {len(dataset)} images of "
            f"{getattr(dataset, 'name', 'the data set')}: using all of them"
        )
    return dataset.subset(min(n, len(dataset)))


def require_model_shape(
    dataset, spec: str, channels: int, classes: int, model: str, names: list | None = None
) -> None:
    """Raise ValueError unless ``dataset`` has the model's input channels and classes (label i
    of other data means another class, so fewer classes are refused too); ``model`` names it.
    ``names``: the class names the model was trained on (an image folder's), if recorded:
    another folder's classes, in another order, would score label i as another class. Where
    the count is inferred from the labels (an idx folder) and smaller, the error says so: a
    test split without the last class is refused too, and its fixed-count name takes it."""
    if dataset.in_channels != channels or dataset.num_classes != classes:
        inferred = getattr(dataset, "classes_from_labels", False) and (  # not image folders
            dataset.num_classes < classes and dataset.in_channels == channels
        )
        raise ValueError(
            f"{spec} has {dataset.in_channels} channels and {dataset.num_classes} classes; "
            f"{model} expects {channels} and {classes}: pick the dataset the model was trained "
            "on"
            + (
                f" (idx counts the classes as its largest label + 1; for {classes}-class data "
                "whose files lack the last labels, name it by its data set, e.g. "
                "fashion-mnist:DIR or mnist:DIR)"
                if inferred
                else ""
            )
        )
    theirs = getattr(dataset, "classes", None)
    if names is None or theirs is None:
        return
    names, theirs = ([same_name(c) for c in x] for x in (names, theirs))
    if names == theirs:
        return
    k = next((i for i, (a, b) in enumerate(zip(names, theirs, strict=False)) if a != b), 0)
    raise ValueError(
        f"{spec}'s class {k} is {theirs[k]!r} but {model} learnt {names[k]!r} as class {k} "
        f"(its classes: {', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''}): "
        "pick the dataset the model was trained on"
    )
