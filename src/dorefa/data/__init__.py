"""Data loaders: IDX (MNIST, Fashion-MNIST), SVHN, CIFAR-10, image folders; batch transforms."""

from .arrays import ArrayDataset
from .errors import DataError
from .imagefolder import ImageFolderDataset
from .registry import get_dataset, list_datasets
from .transforms import default_augment, to_model_input

__all__ = [
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "default_augment",
    "get_dataset",
    "list_datasets",
    "to_model_input",
]
