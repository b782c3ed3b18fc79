"""ImageNet-style image folders: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*``.

Unlike the small in-memory sets, images are decoded per item (Pillow) and augmented there,
the standard ImageNet recipe (Szegedy et al. 2015 "random-resized crop"; the tensorpack
DoReFa AlexNet uses the same family of augmentations):

- train: pick a crop of area ``s * A`` (s ~ U(0.08, 1)) and aspect ratio ``r`` (log r ~
  U(log 3/4, log 4/3)) at a uniform position (10 tries, then the central crop with the ratio
  clamped), resize it to S x S (bilinear), flip horizontally with probability 1/2;
- test: resize the shorter side to ``round(S * 256 / 224)``, then take the central S x S.

Per-item randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so the
same (seed, epoch) gives the same images whatever the DataLoader worker count or order;
call :meth:`ImageFolderDataset.set_epoch` at the start of each epoch.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..geometry import check_int
from ..say import warning
from .errors import DataError, require_folder, same_name

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
SPLIT_DIRS = {"train": ("train",), "test": ("val", "test")}
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def _scan(folder: Path) -> list[os.DirEntry]:
    """The entries of folder but the hidden ones; DataError where it cannot be read (a
    PermissionError had come out of the loader raw)."""
    try:
        return [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"{folder}: cannot read the folder ({e.strerror or e})") from None


def _list_classes(folder: Path) -> list[str]:
    names = sorted(e.name for e in _scan(folder) if e.is_dir())
    by_name: dict[str, list[str]] = {}
    for name in names:  # one class per name as checkpoints record it (same_name)
        by_name.setdefault(same_name(name), []).append(name)
    twins = [spellings for spellings in by_name.values() if len(spellings) > 1]
    if twins:  # both had taken one label, and a class with no images had been made
        raise DataError(
            f"{folder}: class folders {' and '.join(map(ascii, twins[0]))} are the same name "
            "in two Unicode forms (composed and decomposed accents); merge them into one"
        )
    return names


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(EXTENSIONS)


def _list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """(the images in folder, sorted; the names of the other entries, which are skipped: other
    files, folders, broken links)."""
    entries = _scan(folder)
    images = sorted(Path(e.path) for e in entries if _is_image(e))
    return images, sorted(e.name for e in entries if not _is_image(e))


def _say_what_is_left_out(split_dir: Path, skipped: list[str], empty: list[str]) -> None:
    """Files that are not images, and train classes without images, said on stderr (a .tif
    class had vanished from training, and a test image of it counted as an error)."""
    if skipped:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warning(
            f"{split_dir}: skipped {len(skipped)} entries that are not image files "
            f"({'/'.join(EXTENSIONS)}): {shown}"
        )
    if empty:
        warning(
            f"{split_dir}: no images for class {', '.join(map(repr, empty))}; the model "
            "never learns it"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16- and 32-bit integer grey (PNG's I;16, I) is scaled from 0..65535 to 0..255
    (``convert`` clips it: every pixel above 255 came out white); float grey (F) is refused."""
    if img.mode == "F":
        raise ValueError("32-bit float pixels: save the image with 8 or 16 bits a channel")
    if img.mode.startswith("I"):
        grey = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(grey, 0, 65535) // 257).astype(np.uint8), mode="L")
    return img.convert("RGB")


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random-resized crop, torchvision's algorithm."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    # Fallback: the central crop, its aspect ratio clamped into RATIO.
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to round(size * 256 / 224), then crop the central size x size.

    An image more than 4x as long as wide is resized within the crop only (PIL's ``box``: the
    same sampling up to a rounding step of 1): resized whole, a 114-byte 1 x 8000 PNG had taken
    2.4 GB at size 224."""
    short = round(size * 256 / 224)
    w, h = img.size
    if w <= h:
        nw, nh = short, max(short, round(h * short / w))
    else:
        nw, nh = max(short, round(w * short / h)), short
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(nw, nh) > 4 * short:
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    return img.crop((left, top, left + size, top + size))


class ImageFolderDataset(Dataset):
    """Items are (uint8 (3, S, S), label); labels index the sorted class folder names of train."""

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: list[str],
        *,
        train: bool,
        image_size: int = 224,
        name: str = "imagefolder",
    ) -> None:
        image_size = check_int("image_size", image_size, 1)  # 2.5 had made 2 x 2 images
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.in_channels = 3
        self.train = train
        self.image_size = image_size
        self.name = name
        self.epoch = 0
        self.seed = 0

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Select the augmentation draws of this epoch (call before iterating)."""
        self.epoch, self.seed = int(epoch), int(seed)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([s[1] for s in self.samples], dtype=torch.int64)

    def load(self, i: int) -> Image.Image:
        """The i-th image, decoded and converted to RGB; DataError names a corrupt file."""
        path = self.samples[i][0]
        try:
            with Image.open(path) as img:
                return _to_rgb(img)  # converting forces the full decode inside the try
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.load(i)
        s = self.image_size
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            box = random_resized_crop_box(img.width, img.height, rng)
            img = img.resize((s, s), Image.Resampling.BILINEAR, box=box)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = center_resize_crop(img, s)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return x, self.samples[i][1]  # (3, S, S) uint8

    def subset(self, n: int) -> ImageFolderDataset:
        """The first n items (the classes in turn: load_imagefolder's order)."""
        if n < 0:
            raise ValueError(f"subset size must be >= 0, got {n}")
        ds = ImageFolderDataset(
            self.samples[:n],
            self.classes,
            train=self.train,
            image_size=self.image_size,
            name=self.name,
        )
        ds.set_epoch(self.epoch, self.seed)
        return ds


def load_imagefolder(
    folder: str | Path, split: str, image_size: int | None = None
) -> ImageFolderDataset:
    root = Path(folder).expanduser()
    require_folder(root, f"{root}/train/<class>/*.jpg and val/<class>/*")
    split_dir = next((root / d for d in SPLIT_DIRS[split] if (root / d).is_dir()), None)
    if split_dir is None:
        names = " or ".join(f"{root}/{d}/<class>/" for d in SPLIT_DIRS[split])
        raise DataError(f"{root}: no {split} folder (expected {names})")
    # Class indices always come from train/, so that train and val labels agree.
    class_dir = root / "train" if (root / "train").is_dir() else split_dir
    classes = sorted(same_name(c) for c in _list_classes(class_dir))  # as checkpoints record
    if not classes:
        raise DataError(f"{class_dir}: no class folders (expected {class_dir}/<class>/*.jpg)")
    index = {c: k for k, c in enumerate(classes)}
    per_class: list[list[tuple[Path, int]]] = []
    skipped: list[str] = []
    empty: list[str] = []
    for c in _list_classes(split_dir):
        label = index.get(same_name(c))
        if label is None:
            raise DataError(f"{split_dir / c}: class {c!r} is not among the classes of {class_dir}")
        images, others = _list_images(split_dir / c)
        per_class.append([(p, label) for p in images])
        skipped += [f"{c}/{name}" for name in others]
        empty += [c] if not images else []
    _say_what_is_left_out(split_dir, skipped, empty if split == "train" else [])
    # The classes in turn (each class's files in name order), so that the first n items, which
    # --subset takes, hold every class: in class order they would all be the first class's.
    samples = [s for turn in itertools.zip_longest(*per_class) for s in turn if s is not None]
    if not samples:
        raise DataError(f"{split_dir}: no images ({'/'.join(EXTENSIONS)}) in any class folder")
    size = 224 if image_size is None else image_size  # 0 had given 224
    return ImageFolderDataset(samples, classes, train=split == "train", image_size=size)
