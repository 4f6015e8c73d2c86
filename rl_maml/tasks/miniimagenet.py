"""MiniImageNet (Vinyals et al. 2016) with the Ravi and Larochelle (2017) split: 64/16/20 classes.

The data root holds either

- ``images/`` (one JPEG per image, any size) and ``train.csv``, ``val.csv``, ``test.csv`` with the
  header ``filename,label`` (the split files of Ravi and Larochelle), or
- ``train/``, ``val/``, ``test/`` with one sub-folder of images per class.

Every image is decoded once, resized to 84x84 RGB (bilinear) and kept in a cache file
(``uint8 [classes, images, 84, 84, 3]`` per split, written atomically). All classes of a split must
have the same number of images (600 in the real data). MiniImageNet is built from ImageNet and has
no official download; get it under ImageNet's terms and lay it out as above.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rl_maml.tasks.fewshot import DatasetError, load_array_cache, save_array_cache
from rl_maml.tasks.omniglot import default_cache_dir, resolve_root

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
_LAYOUT = ("expected images/ with train.csv, val.csv and test.csv (header 'filename,label'), or train/, val/ "
           "and test/ with one folder of images per class; see rl_maml/tasks/miniimagenet.py")


def _split_files(root: Path, split: str) -> dict[str, list[Path]]:
    """``label -> [image paths]`` of one split, in a file-system-independent order."""
    csv_path, folder = root / f"{split}.csv", root / split
    classes: dict[str, list[Path]] = {}
    if csv_path.is_file():
        try:
            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise DatasetError(f"MiniImageNet: cannot read {csv_path} ({e}); {_LAYOUT}") from None
        if not rows or not {"filename", "label"} <= set(rows[0]):
            raise DatasetError(f"MiniImageNet: {csv_path} lacks the columns filename,label; {_LAYOUT}")
        for row in rows:
            classes.setdefault(row["label"], []).append(root / "images" / row["filename"])
    elif folder.is_dir():
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            classes[d.name] = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        raise DatasetError(f"MiniImageNet: neither {csv_path} nor {folder}/ exists under {root}; {_LAYOUT}")
    if not classes:
        raise DatasetError(f"MiniImageNet: the {split} split under {root} has no classes; {_LAYOUT}")
    return {k: sorted(v) for k, v in sorted(classes.items())}


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"MiniImageNet: image {path} is listed but missing; {_LAYOUT}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"MiniImageNet: cannot decode {path} ({e}); the file is corrupt, replace it") from None


def load_miniimagenet(root: str | Path | None = None, cache_dir: str | Path | None = None,
                      verbose: bool = True) -> dict[str, Tensor]:
    """``{"train", "val", "test"} -> uint8 [classes, images, 84, 84, 3]`` (cached after the first call).

    Raises:
        DatasetError: a split or image is missing or corrupt, or classes differ in image count.
    """
    root = resolve_root(root, "miniimagenet")
    files = {s: _split_files(root, s) for s in SPLITS}
    key = hashlib.md5(repr([(s, lbl, [(p.name, p.stat().st_size if p.is_file() else -1) for p in ps])
                            for s in SPLITS for lbl, ps in files[s].items()]).encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache / f"miniimagenet{IMAGE_SIZE}_{key}.npz"
    cached = load_array_cache(cache_file, SPLITS)
    if cached is not None:
        return {s: torch.from_numpy(cached[s]) for s in SPLITS}
    if verbose:
        print(f"MiniImageNet: decoding {root} once; cache: {cache_file}", flush=True)
    out = {}
    for split, classes in files.items():
        counts = {len(v) for v in classes.values()}
        if len(counts) != 1:
            raise DatasetError(f"MiniImageNet: classes of the {split} split have different image counts "
                               f"{sorted(counts)}; every class needs the same number (600 in the real data)")
        out[split] = np.stack([np.stack([_decode(p) for p in paths]) for paths in classes.values()])
    save_array_cache(cache_file, out)
    return {s: torch.from_numpy(v) for s, v in out.items()}
