"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015) for few-shot classification.

The data root holds the official ``images_background.zip`` and ``images_evaluation.zip`` (or the
folders they extract to). :func:`load_omniglot` pools their 1623 characters (20 drawings each),
decodes every drawing once to 28x28 greyscale (Lanczos resampling, ``uint8``, stroke dark as in the
files) and keeps the result in a cache file, so later runs start in seconds. The cache is keyed by
the sizes and MD5 digests of the source files and written atomically.

Splits (:func:`omniglot_splits`): characters are ordered by their path
``<zip>/<alphabet>/<character>`` (independent of file-system order), permuted with NumPy's
``default_rng(split_seed)`` (``split_seed = 1623`` by default), and cut into 1100 meta-training,
100 validation and 423 test characters: 1200 for meta-training in all, as in the MAML paper.

:func:`download_omniglot` fetches the official zips and checks their published MD5 digests; it
runs only when a user asks for it (``rl-maml download omniglot --root DIR``).
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rl_maml.tasks.fewshot import DatasetError, file_md5, load_array_cache, save_array_cache

ZIPS = ("images_background", "images_evaluation")
OFFICIAL_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
URL_PREFIX = "https://github.com/brendenlake/omniglot/raw/master/python"
NUM_CHARACTERS = 1623
DRAWINGS_PER_CHARACTER = 20
IMAGE_SIZE = 28
DATA_ENV = "RL_MAML_DATA"
CACHE_ENV = "RL_MAML_CACHE"
_HOW_TO_GET = ("get the official zips with 'rl-maml download omniglot --root DIR' (or from "
               f"{URL_PREFIX}/<name>.zip) and point data.root or ${DATA_ENV} at DIR")


def default_cache_dir() -> Path:
    """``$RL_MAML_CACHE`` if set, else ``~/.cache/rl_maml``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rl_maml")


def resolve_root(root: str | Path | None, name: str = "omniglot") -> Path:
    """The data folder: ``root`` if given, else ``$RL_MAML_DATA/<name>``."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser() / name
    raise DatasetError(f"no data root for {name}: set data.root in the config or the environment variable "
                       f"{DATA_ENV} (a folder holding {name}/)")


@dataclass(frozen=True)
class OmniglotData:
    """All 1623 characters: ``images`` ``uint8 [1623, 20, 28, 28]``, ``names`` ``'<zip>/<alphabet>/<character>'``."""

    images: Tensor
    names: tuple[str, ...]


def _sources(root: Path) -> dict[str, Path]:
    """Each of the two parts as a zip file or an extracted folder; raises naming what is missing."""
    found = {}
    for part in ZIPS:
        zip_path, folder = root / f"{part}.zip", root / part
        if zip_path.is_file():
            found[part] = zip_path
        elif folder.is_dir():
            found[part] = folder
        else:
            raise DatasetError(f"Omniglot: neither {zip_path} nor {folder}/ exists; {_HOW_TO_GET}")
    return found


def _fingerprint(sources: dict[str, Path]) -> str:
    parts = []
    for part, path in sources.items():
        if path.is_file():
            parts.append(f"{part}:{path.stat().st_size}:{file_md5(path)}")
        else:
            files = sorted(path.rglob("*.png"))
            parts.append(f"{part}:dir:{len(files)}:{sum(f.stat().st_size for f in files)}")
    return hashlib.md5("|".join(parts).encode()).hexdigest()[:16]


def _decode(data: bytes, where: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L").resize((size, size), resample=Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"Omniglot: cannot decode {where} ({e}); the file is corrupt: {_HOW_TO_GET}") from None


def _read_part(part: str, path: Path, size: int) -> dict[str, list[np.ndarray]]:
    """``'<part>/<alphabet>/<character>' -> [images]`` from one zip or folder."""
    chars: dict[str, list[tuple[str, np.ndarray]]] = {}
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    raise DatasetError(f"Omniglot: {path} is corrupt (bad CRC in {bad}); {_HOW_TO_GET}")
                for name in z.namelist():
                    pieces = name.split("/")
                    if not name.endswith(".png") or len(pieces) != 4:
                        continue
                    key = "/".join(pieces[:3])
                    chars.setdefault(key, []).append((pieces[3], _decode(z.read(name), f"{path}:{name}", size)))
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise DatasetError(f"Omniglot: {path} is not a readable zip file ({e}); it may be truncated: "
                               f"{_HOW_TO_GET}") from None
    else:
        for f in path.rglob("*.png"):
            rel = f.relative_to(path.parent).parts
            if len(rel) != 4:
                continue
            chars.setdefault("/".join(rel[:3]), []).append((rel[3], _decode(f.read_bytes(), str(f), size)))
    if not chars:
        raise DatasetError(f"Omniglot: {path} holds no '{part}/<alphabet>/<character>/<id>.png' images; {_HOW_TO_GET}")
    return {k: [img for _, img in sorted(v)] for k, v in chars.items()}


def load_omniglot(root: str | Path | None = None, cache_dir: str | Path | None = None, verbose: bool = True) -> OmniglotData:
    """All Omniglot characters, decoded to 28x28 ``uint8`` (from the cache when it is current).

    Raises:
        DatasetError: a part is missing, a zip is truncated or corrupt, an image does not decode,
            or the counts differ from 1623 characters x 20 drawings.
    """
    root = resolve_root(root)
    sources = _sources(root)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache / f"omniglot{IMAGE_SIZE}_{_fingerprint(sources)}.npz"
    cached = load_array_cache(cache_file, ("images", "names"))
    if cached is not None and cached["images"].shape == (NUM_CHARACTERS, DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE):
        return OmniglotData(torch.from_numpy(cached["images"]), tuple(str(n) for n in cached["names"]))
    if verbose:
        print(f"Omniglot: decoding {root} once; cache: {cache_file}", flush=True)
    chars: dict[str, list[np.ndarray]] = {}
    for part, path in sources.items():
        chars.update(_read_part(part, path, IMAGE_SIZE))
    names = sorted(chars)
    counts = {len(chars[n]) for n in names}
    if len(names) != NUM_CHARACTERS or counts != {DRAWINGS_PER_CHARACTER}:
        raise DatasetError(
            f"Omniglot: found {len(names)} characters with {sorted(counts)} drawings each under {root}; expected "
            f"{NUM_CHARACTERS} characters x {DRAWINGS_PER_CHARACTER} drawings (a partial or altered copy?): {_HOW_TO_GET}"
        )
    images = np.stack([np.stack(chars[n]) for n in names])
    save_array_cache(cache_file, {"images": images, "names": np.array(names)})
    return OmniglotData(torch.from_numpy(images), tuple(names))


@dataclass(frozen=True)
class Splits:
    """Character indices (into :class:`OmniglotData`) of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def omniglot_splits(names: tuple[str, ...], split_seed: int = 1623, num_train: int = 1100, num_val: int = 100) -> Splits:
    """Seeded, file-system-independent split of the characters (see the module docstring)."""
    if num_train + num_val >= len(names):
        raise ValueError(f"num_train + num_val = {num_train + num_val} leaves no test characters of {len(names)}")
    order = np.argsort(np.array(names), kind="stable")
    perm = order[np.random.default_rng(split_seed).permutation(len(names))]
    return Splits(perm[:num_train], perm[num_train:num_train + num_val], perm[num_train + num_val:])


def download_omniglot(root: str | Path, url_prefix: str = URL_PREFIX) -> list[Path]:
    """Download the official zips into ``root`` and check their MD5 digests.

    A file whose digest differs is deleted and reported; a file already present with the right
    digest is kept. Files are written under a temporary name and renamed when complete.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for part, md5 in OFFICIAL_MD5.items():
        target = root / f"{part}.zip"
        if target.is_file() and file_md5(target) == md5:
            out.append(target)
            continue
        tmp = root / f".{part}.zip.part"
        url = f"{url_prefix}/{part}.zip"
        print(f"downloading {url}", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"Omniglot: downloading {url} failed ({e}); check the connection and retry") from None
        got = file_md5(tmp)
        if got != md5:
            tmp.unlink()
            raise DatasetError(f"Omniglot: {url} has MD5 {got}, expected {md5}; the download is corrupt, retry")
        os.replace(tmp, target)
        out.append(target)
    return out
