"""Each layout read through `load_dataset(..., "auto")`, and each kind of bad input."""
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from harness.data import DataError, detect_layout, load_dataset
from harness.data.splits import train_test_split
from harness.data.validate import validate


def test_isic_gpt_layout(isic_dir):
    assert detect_layout(isic_dir) == "isic-gpt"
    ds = load_dataset(isic_dir, "auto")
    assert len(ds) == 18
    assert ds.classes == ["melanocytic nevus", "melanoma", "vascular lesion"]
    assert ds.class_counts() == {"melanocytic nevus": 6, "melanoma": 6, "vascular lesion": 6}
    by_id = {s.id: s for s in ds}
    # masks found in each accepted place
    assert by_id["ISIC_000000"].mask.name == "ISIC_000000.png" and by_id["ISIC_000000"].mask.parent.name == "melanoma"
    assert by_id["ISIC_000001"].mask.parent.name == "masks"
    assert by_id["ISIC_000002"].mask.name == "ISIC_000002_segmentation.png"
    # both description forms
    assert by_id["ISIC_000001"].description.endswith("case 1")
    assert by_id["ISIC_000002"].description == "a dermoscopic lesion photo of melanoma, case 2"
    assert all(s.split == "" for s in ds)
    assert len(validate(ds, progress=False)) == 18


def test_isic_gpt_train_test_folders_fix_the_split(isic_dir, tmp_path):
    root = tmp_path / "split"
    for part in ("train", "test"):
        shutil.copytree(isic_dir, root / part)
    for p in (root / "test" / "images").rglob("*"):
        if p.is_file():
            p.rename(p.with_name("T" + p.name))
    for p in (root / "test" / "masks").rglob("*.png"):
        p.rename(p.with_name("T" + p.name))
    ds = load_dataset(root, "auto")
    assert Counter(s.split for s in ds) == {"train": 18, "test": 18}
    assert train_test_split(ds, 0.5, seed=1) is ds


def test_ham10000_layout(ham_dir):
    assert detect_layout(ham_dir) == "ham10000"
    ds = load_dataset(ham_dir)
    assert len(ds) == 30
    assert ds.class_counts() == {"benign keratosis": 6, "melanocytic nevus": 12, "melanoma": 8,
                                 "vascular lesion": 4}
    assert {s.image.parent.name for s in ds} == {"HAM10000_images_part_1", "ham10000_images_part2"}
    assert all(s.mask.name == f"{s.id}_segmentation.png" for s in ds)
    assert all(s.group.startswith("HAM_") for s in ds)


def test_manifest_layout(manifest_csv):
    assert detect_layout(manifest_csv) == "manifest"
    ds = load_dataset(manifest_csv)
    assert len(ds) == 12 and ds.classes == ["melanoma", "nevus"]
    assert Counter(s.split for s in ds) == {"train": 8, "test": 4}
    assert ds.samples[0].image == (manifest_csv.parent / "files" / "x0.png").resolve()
    assert ds.samples[1].description == "desc, 1"


def test_unknown_layout_is_explained(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- bad input
def _first(root, pattern):
    return sorted(root.rglob(pattern))[0]


def test_truncated_image(isic_dir):
    img = _first(isic_dir / "images", "*.jpg")
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{img.name}: unreadable or truncated image"):
        validate(load_dataset(isic_dir), progress=False)


def test_mask_missing(isic_dir):
    mask = isic_dir / "masks" / "melanoma" / "ISIC_000000.png"
    mask.unlink()
    with pytest.raises(DataError, match="ISIC_000000.png: mask missing"):
        load_dataset(isic_dir)


def test_mask_size_differs(isic_dir):
    mask = isic_dir / "masks" / "melanoma" / "ISIC_000000.png"
    Image.open(mask).resize((40, 48), Image.NEAREST).save(mask)
    with pytest.raises(DataError, match=r"ISIC_000000.png: mask size 40x48 differs from image"):
        validate(load_dataset(isic_dir), progress=False)


def test_mask_not_binary_counts_pixels(isic_dir):
    mask = isic_dir / "masks" / "melanoma" / "ISIC_000000.png"
    arr = np.array(Image.open(mask))
    arr[:3, :5] = 128
    Image.fromarray(arr).save(mask)
    with pytest.raises(DataError, match=r"ISIC_000000.png: mask not binary: 15 of 2304 pixels"):
        validate(load_dataset(isic_dir), progress=False)


def test_all_bad_files_listed_together(isic_dir):
    for name in ("ISIC_000000", "ISIC_100000"):
        m = next((isic_dir / "masks").rglob(f"{name}.png"))
        Image.new("L", (10, 10)).save(m)
    with pytest.raises(DataError, match=r"^2 bad file\(s\)"):
        validate(load_dataset(isic_dir), progress=False)


def test_unknown_label_ham(ham_dir):
    meta = ham_dir / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace(",vasc,", ",xyz,", 1))
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv, line \d+: unknown label dx='xyz'"):
        load_dataset(ham_dir)


def test_unknown_label_manifest(manifest_csv):
    lines = manifest_csv.read_text().splitlines()
    lines[2] = lines[2].replace(",melanoma,", ",,")
    manifest_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list.csv, line 3: empty 'label'"):
        load_dataset(manifest_csv)


def test_every_manifest_problem_is_in_one_message(manifest_csv):
    """An empty label, a duplicate id and a missing image on three lines: one error names all three."""
    manifest_csv.write_text("image,mask,label,description,split\n"
                            "files/x0.png,files/x0_m.png,,d,train\n"                  # line 2: no label
                            "files/x1.png,files/x1_m.png,melanoma,d,train\n"
                            "files/x1.png,files/x1_m.png,melanoma,d,test\n"           # line 4: x1 again
                            "files/nowhere.png,files/x2_m.png,nevus,d,train\n"        # line 5: no such image
                            "files/x3.png,files/x3_m.png,nevus,d,train\n")
    with pytest.raises(DataError) as e:
        load_dataset(manifest_csv)
    message = str(e.value)
    assert message.startswith(f"3 problem(s) in {manifest_csv.resolve()}:")
    assert "line 2: empty 'label'" in message and "line 4: duplicate id 'x1' (also line 3)" in message
    assert "line 5: image file" in message and "nowhere.png does not exist" in message


def test_duplicate_id(isic_dir):
    src = isic_dir / "images" / "melanoma" / "ISIC_000000.png"
    shutil.copy(src, isic_dir / "images" / "vascular lesion" / "ISIC_000000.png")
    with pytest.raises(DataError, match="duplicate id 'ISIC_000000'"):
        load_dataset(isic_dir)


def test_duplicate_id_ham(ham_dir):
    meta = ham_dir / "HAM10000_metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match="duplicate image_id 'ISIC_0000000'"):
        load_dataset(ham_dir)


def test_class_too_small_for_split(isic_dir):
    for p in sorted((isic_dir / "images" / "vascular lesion").iterdir())[1:]:
        p.unlink()
    ds = load_dataset(isic_dir)
    with pytest.raises(DataError, match=r"class 'vascular lesion' has 1 sample\(s\).*needs at least 2"):
        train_test_split(ds, 0.2, seed=0)


def test_bad_descriptions_json(isic_dir):
    (isic_dir / "descriptions.json").write_text("{not json")
    with pytest.raises(DataError, match="descriptions.json: not valid JSON"):
        load_dataset(isic_dir)
    (isic_dir / "descriptions.json").write_text(json.dumps({"ISIC_000000": 3}))
    with pytest.raises(DataError, match="description of 'ISIC_000000' is not text"):
        load_dataset(isic_dir)
