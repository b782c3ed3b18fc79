"""Data loaders: IDX (MNIST, Fashion-MNIST), SVHN, CIFAR-10, image folders; batch transforms."""

from .arrays import ArrayDataset
from .errors import (
    DataError,
    check_splits,
    first_images,
    require_classes,
    require_model_shape,
)
from .imagefolder import ImageFolderDataset
from .registry import check_spec, get_dataset, learnt_data, list_datasets
from .transforms import default_augment, to_model_input

__all__ = [
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "check_spec",
    "check_splits",
    "default_augment",
    "first_images",
    "get_dataset",
    "learnt_data",
    "list_datasets",
    "require_classes",
    "require_model_shape",
    "to_model_input",
]
