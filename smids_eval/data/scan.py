"""Find the images of an SMIDS-style folder (one subfolder per class) and validate the layout.

Owns the image-file rules every reader shares (data set, ``--ood-dir`` folders, predict.py):
``IMAGE_SUFFIXES`` and ``folder_files`` / ``image_files``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .. import CLASSES
from ..errors import DataError
from .classes import canonical_class, class_index

#: every suffix ``decode.read_image`` (Pillow + ``to_rgb``) turns into RGB; a test decodes each.
#: GIF (first frame, palette → RGB) and WebP are kept: far-OOD folders accepted them before.
IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}
_MAX_LISTED = 25


@dataclass(frozen=True)
class ImageFile:
    relpath: str      # posix path relative to the data root, e.g. "Normal_Sperm/a.png"
    label: int        # index into CLASSES
    sha256: str       # content hash of the file's bytes


def listing(paths: list[str]) -> str:
    """Bulleted list of offending paths, cut after a few dozen."""
    shown = "\n".join(f"  - {p}" for p in paths[:_MAX_LISTED])
    more = f"\n  … and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return shown + more


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini"}


def is_image_file(path: Path) -> bool:
    """True when the suffix (any case) is one of ``IMAGE_SUFFIXES``."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder``, recursive and sorted, skipping hidden ones: a name starting
    with '.' (also any folder on the way, e.g. ``.ipynb_checkpoints``), Thumbs.db, desktop.ini.
    Non-image files are kept so callers can report them."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(_is_hidden(part) for part in p.relative_to(folder).parts))


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` (``folder_files`` with an image suffix)."""
    return [p for p in folder_files(folder) if is_image_file(p)]


def scan_folder(root: str | Path) -> list[ImageFile]:
    """List every image under ``root/<class>/``; raise one DataError naming all problems."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}\n"
                        "Pass --data-dir (or SMIDS_DATA_DIR) pointing to a folder with one "
                        f"subfolder per class: {', '.join(CLASSES)}.")
    class_dirs: dict[str, Path] = {}
    problems: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)):
        name = canonical_class(sub.name)
        if name is None:
            problems.append(f"unknown class folder {sub} (expected one of {', '.join(CLASSES)}, "
                            "any case, with spaces, '-' or '_'): rename or remove it")
        elif name in class_dirs:
            problems.append(f"class {name} has two folders: {class_dirs[name]} and {sub}: merge them")
        else:
            class_dirs[name] = sub
    missing = [c for c in CLASSES if c not in class_dirs]
    if missing:
        problems.append(f"missing class folder(s) {', '.join(missing)} under {root}")

    files: list[ImageFile] = []
    bad_type, empty_files, empty_classes = [], [], []
    for name, folder in class_dirs.items():
        entries = folder_files(folder)
        images = [p for p in entries if is_image_file(p)]
        bad_type += [str(p) for p in entries if not is_image_file(p)]
        if not images:
            empty_classes.append(str(folder))
        for path in images:
            data = path.read_bytes()
            if not data:
                empty_files.append(str(path))
                continue
            files.append(ImageFile(path.relative_to(root).as_posix(), class_index(name),
                                   hashlib.sha256(data).hexdigest()))
    if bad_type:
        problems.append("non-image files (accepted: " + ", ".join(sorted(IMAGE_SUFFIXES))
                        + "); move them out of the class folders:\n" + listing(bad_type))
    if empty_files:
        problems.append("zero-byte image files; delete or re-export them:\n" + listing(empty_files))
    if empty_classes:
        problems.append("class folders without any image:\n" + listing(empty_classes))
    if problems:
        raise DataError(f"the data set at {root} cannot be used:\n- " + "\n- ".join(problems))
    files.sort(key=lambda f: (f.label, f.relpath))
    return files


def fingerprint(files: list[ImageFile]) -> str:
    """Content fingerprint of a data set: hash of (relative path, label, file hash) triples."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relpath}\0{f.label}\0{f.sha256}\n".encode())
    return h.hexdigest()[:16]


def exact_duplicates(files: list[ImageFile]) -> list[list[str]]:
    """Groups (≥ 2) of files with byte-identical content."""
    by_hash: dict[str, list[str]] = {}
    for f in files:
        by_hash.setdefault(f.sha256, []).append(f.relpath)
    return [paths for paths in by_hash.values() if len(paths) > 1]
