"""Read a dataset folder into Samples: manifest CSV, ISIC-GPT layout, HAM10000 layout, auto-detect.

Readers only look at names and text files (fast); image content is checked by `validate`.
Every problem raises DataError naming the file and what is wrong.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from harness.config import LAYOUTS
from harness.data.records import DataError, Dataset, Sample, raise_problems

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MANIFEST_COLUMNS = ("image", "mask", "label", "description", "split")

# HAM10000 `dx` codes -> readable class names (the demo dataset uses the same names).
HAM_DX = {
    "akiec": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
HAM_METADATA = "HAM10000_metadata.csv"
_HAM_IMAGES_RE = re.compile(r"^ham10000_images_part_?[12]$", re.IGNORECASE)
_HAM_MASKS_RE = re.compile(r"^ham10000_segmentations_lesion_tschandl$", re.IGNORECASE)


def load_dataset(path: str | Path, layout: str = "auto") -> Dataset:
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "manifest":
        return read_manifest(path / "manifest.csv" if path.is_dir() else path)
    if not path.is_dir():
        raise DataError(f"{path}: layout {layout!r} needs a folder, got a file")
    return read_isic_gpt(path) if layout == "isic-gpt" else read_ham10000(path)


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(f"{path}: not a dataset folder or a manifest CSV")
    if (path / HAM_METADATA).is_file():
        return "ham10000"
    if (path / "images").is_dir() or (path / "train" / "images").is_dir():
        return "isic-gpt"
    if (path / "manifest.csv").is_file():
        return "manifest"
    raise DataError(
        f"{path}: cannot tell the layout. Expected one of: {HAM_METADATA} (HAM10000), an images/ "
        "or train/images/ folder (ISIC-GPT), or manifest.csv (manifest). Pass --layout to force one.")


# ---------------------------------------------------------------- manifest CSV
def _manifest_rows(csv_path: Path) -> list[dict]:
    """The CSV's rows as dicts; DataError for a file that is not a UTF-8 CSV with the manifest's columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; "
                                f"a manifest needs {','.join(MANIFEST_COLUMNS)}")
            return list(reader)
    except UnicodeDecodeError as e:       # an image, a zip or a spreadsheet given where the CSV belongs
        raise DataError(f"{csv_path}: not a UTF-8 text file (byte {e.start} is 0x{e.object[e.start]:02x}); "
                        "a manifest is a CSV with the columns " + ",".join(MANIFEST_COLUMNS)) from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a readable CSV ({e})") from None


def read_manifest(csv_path: Path) -> Dataset:
    csv_path = Path(csv_path).resolve()
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest not found")
    rows = _manifest_rows(csv_path)
    base = csv_path.parent
    samples, seen, problems = [], {}, []
    shas = {}
    for line, row in enumerate(rows, start=2):
        sample, problem = _manifest_row(row, f"{csv_path}, line {line}", base, seen, line)
        if problem:
            problems.append(problem)
            continue
        samples.append(sample)
        if row.get("image_sha256"):
            shas[sample.id] = (row["image_sha256"], row.get("mask_sha256") or "")
    raise_problems(problems, f"problem(s) in {csv_path}")
    extra = {"file_sha256": shas} if len(shas) == len(samples) else {}
    return Dataset(samples=samples, root=csv_path, layout="manifest", extra=extra)


def _manifest_row(row: dict, where: str, base: Path, seen: dict[str, int], line: int) -> tuple[Sample | None, str]:
    """One manifest line -> (its sample, "") or (None, what is wrong with it)."""
    if not row["image"]:
        return None, f"{where}: empty 'image'"
    if not (row["label"] or "").strip():
        return None, f"{where}: empty 'label' for {row['image']}"
    split = (row["split"] or "").strip().lower()
    if split not in ("", "train", "test"):
        return None, f"{where}: split {row['split']!r} is not train, test or empty"
    image = (base / row["image"]).resolve()
    mask = (base / row["mask"]).resolve() if row["mask"] else None
    sid = (row.get("id") or "").strip() or image.stem
    if sid in seen:
        return None, f"{where}: duplicate id {sid!r} (also line {seen[sid]})"
    seen[sid] = line
    for p, what in ((image, "image"), (mask, "mask")):
        if p is not None and not p.is_file():
            return None, f"{where}: {what} file {p} does not exist"
    return Sample(id=sid, image=image, mask=mask, label=row["label"].strip(), description=row["description"] or "",
                  split=split, group=(row.get("group") or "").strip()), ""


# ---------------------------------------------------------------- ISIC-GPT layout
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def read_descriptions(path: Path) -> dict[str, str]:
    """`{"<id>": "text"}` or `{"<id>": {"description": "text", ...}}`; absent file -> {}."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping image id -> description")
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            value = value.get("description", "")
        if not isinstance(value, str):
            raise DataError(f"{path}: description of {key!r} is not text")
        out[str(key)] = value
    return out


def _find_mask(root: Path, label: str, sid: str) -> Path | None:
    for folder in (root / "masks" / label, root / "masks"):
        for name in (f"{sid}.png", f"{sid}_segmentation.png"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_isic_part(root: Path, split: str, descriptions: dict[str, str], seen: dict[str, Path]) -> list[Sample]:
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{root}: no images/ folder (ISIC-GPT layout: images/<class>/<id>.jpg)")
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{images}: no class folders (expected images/<class>/<id>.jpg)")
    samples, problems = [], []
    for cdir in class_dirs:
        for img in _images_in(cdir):
            sid = img.stem
            if sid in seen:
                problems.append(f"{img}: duplicate id {sid!r} (also {seen[sid]})")
                continue
            seen[sid] = img
            mask = _find_mask(root, cdir.name, sid)
            if mask is None:
                problems.append(f"{img}: mask missing (looked for masks/{cdir.name}/{sid}.png, "
                                f"masks/{sid}.png and *_segmentation.png there)")
                continue
            samples.append(Sample(id=sid, image=img.resolve(), mask=mask.resolve(), label=cdir.name,
                                  description=descriptions.get(sid, ""), split=split))
    raise_problems(problems, f"problem(s) in {root}")
    return samples


def read_isic_gpt(root: Path) -> Dataset:
    root = Path(root).resolve()
    top_desc = read_descriptions(root / "descriptions.json")
    seen: dict[str, Path] = {}
    if (root / "train" / "images").is_dir():
        samples = []
        for split in ("train", "test"):
            part = root / split
            if not part.is_dir():
                raise DataError(f"{root}: has train/ but no {split}/ folder")
            samples += _read_isic_part(part, split, {**top_desc, **read_descriptions(part / "descriptions.json")}, seen)
    else:
        samples = _read_isic_part(root, "", top_desc, seen)
    return Dataset(samples=samples, root=root, layout="isic-gpt")


# ---------------------------------------------------------------- HAM10000 layout
def _matching_dirs(root: Path, pattern: re.Pattern) -> list[Path]:
    """Folders named like `pattern` in root, and the same name nested once inside (as Kaggle unzips)."""
    found = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and pattern.match(p.name):
            found.append(p)
            found += [q for q in sorted(p.iterdir()) if q.is_dir() and pattern.match(q.name)]
    return found


def read_ham10000(root: Path) -> Dataset:
    root = Path(root).resolve()
    meta = root / HAM_METADATA
    if not meta.is_file():
        raise DataError(f"{root}: {HAM_METADATA} not found")
    image_dirs = _matching_dirs(root, _HAM_IMAGES_RE)
    if not image_dirs:
        raise DataError(f"{root}: no HAM10000_images_part_1/ or _part_2/ folder")
    images = {p.stem: p for d in image_dirs for p in _images_in(d)}
    masks = {p.name[: -len("_segmentation.png")]: p
             for d in _matching_dirs(root, _HAM_MASKS_RE) for p in sorted(d.glob("*_segmentation.png"))}
    descriptions = read_descriptions(root / "descriptions.json")
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("lesion_id", "image_id", "dx") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{meta}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    samples, seen, problems = [], {}, []
    for line, row in enumerate(rows, start=2):
        sid, dx = row["image_id"].strip(), row["dx"].strip().lower()
        where = f"{meta}, line {line}"
        problem = (f"{where}: unknown label dx={row['dx']!r} for {sid}; known: {', '.join(HAM_DX)}" if dx not in HAM_DX
                   else f"{where}: duplicate image_id {sid!r} (also line {seen[sid]})" if sid in seen
                   else f"{where}: image {sid}.jpg not found in {', '.join(d.name for d in image_dirs)}"
                   if sid not in images
                   else f"{where}: mask {sid}_segmentation.png not found (HAM10000_segmentations_lesion_tschandl/)"
                   if sid not in masks else "")
        seen.setdefault(sid, line)
        if problem:
            problems.append(problem)
            continue
        samples.append(Sample(id=sid, image=images[sid].resolve(), mask=masks[sid].resolve(),
                              label=HAM_DX[dx], description=descriptions.get(sid, ""), split="",
                              group=row["lesion_id"].strip()))
    raise_problems(problems, f"problem(s) in {meta}")
    return Dataset(samples=samples, root=root, layout="ham10000")
