"""Figures 2 and 3 as PNG, composed with PIL (deterministic pixels, no plotting backend).

Figure 2 (paper: "Comparison of Image-Mask Pairs, one row corresponds to one category"): one row per
class, sorted by class name; columns real image, real mask, generated image, generated mask. The
real pair is the first training-split sample of the class by id, the generated pair the first
generated sample of the class by id. Images are resized to `cell` x `cell` with LANCZOS, masks with
NEAREST (shown white on black). A class one side lacks gets grey "n/a" panels.
Layout: a header strip of HEADER_H px, then row r's panel c at `cell_box(r, c, cell)`.

Figure 3: the `heatmaps/figure3_<model>.png` artifacts of explain runs, stacked top to bottom (one
per model, in the paper's model order), each under a LABEL_H px strip naming the model and run.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from harness.data.records import Dataset, Sample

LABEL_W = 180          # class-name column of Figure 2
HEADER_H = 28          # column-title strip of Figure 2
GAP = 4
LABEL_H = 24           # model strip above each Figure 3 panel
COLUMNS = ("real image", "real mask", "generated image", "generated mask")
BACKGROUND = (255, 255, 255)
NA_GREY = (200, 200, 200)


def _font():
    return ImageFont.load_default()


def cell_box(row: int, col: int, cell: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of panel `col` of row `row` in Figure 2."""
    x0 = LABEL_W + GAP + col * (cell + GAP)
    y0 = HEADER_H + GAP + row * (cell + GAP)
    return x0, y0, x0 + cell, y0 + cell


def figure2_size(n_rows: int, cell: int) -> tuple[int, int]:
    return LABEL_W + GAP + len(COLUMNS) * (cell + GAP), HEADER_H + GAP + n_rows * (cell + GAP)


def panel_image(path: Path, cell: int) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((cell, cell), Image.LANCZOS)


def panel_mask(path: Path, cell: int) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("L").resize((cell, cell), Image.NEAREST).convert("RGB")


def _na(cell: int) -> Image.Image:
    im = Image.new("RGB", (cell, cell), NA_GREY)
    ImageDraw.Draw(im).text((cell // 2 - 8, cell // 2 - 6), "n/a", fill=(90, 90, 90), font=_font())
    return im


def _first_by_class(samples: list[Sample]) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for s in sorted(samples, key=lambda s: s.id):
        out.setdefault(s.label, s)
    return out


def figure2(generated: Dataset, real: Dataset | None, cell: int = 128) -> tuple[Image.Image, list[dict]]:
    """The figure and its rows: [{class, real_id, generated_id}] (ids "" where a side lacks the class)."""
    gen = _first_by_class(generated.samples)
    real_pick: dict[str, Sample] = {}
    if real is not None:
        train = [s for s in real.samples if s.split == "train"]
        real_pick = {**_first_by_class(real.samples), **_first_by_class(train)}   # train split preferred
    classes = sorted(set(gen) | set(real_pick))
    width, height = figure2_size(len(classes), cell)
    fig = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(fig)
    font = _font()
    for c, title in enumerate(COLUMNS):
        x0, _, _, _ = cell_box(0, c, cell)
        draw.text((x0 + 4, 8), title, fill=(0, 0, 0), font=font)
    rows = []
    for r, label in enumerate(classes):
        _, y0, _, y1 = cell_box(r, 0, cell)
        draw.text((6, (y0 + y1) // 2 - 6), label[:28], fill=(0, 0, 0), font=font)
        panels = []
        for pick in (real_pick.get(label), gen.get(label)):
            if pick is None:
                panels += [_na(cell), _na(cell)]
            else:
                panels += [panel_image(pick.image, cell), panel_mask(pick.mask, cell) if pick.mask else _na(cell)]
        for c, panel in enumerate(panels):
            fig.paste(panel, cell_box(r, c, cell)[:2])
        rows.append({"class": label, "real_id": real_pick[label].id if label in real_pick else "",
                     "generated_id": gen[label].id if label in gen else ""})
    return fig, rows


def figure3(panels: list[tuple[str, str, Image.Image]]) -> Image.Image:
    """Stack (model, run id, heatmap figure) panels, each under a strip naming the model and its run."""
    width = max(im.width for _, _, im in panels)
    height = sum(LABEL_H + im.height for _, _, im in panels)
    fig = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(fig)
    y = 0
    for model, run_id, im in panels:
        draw.text((6, y + 6), f"{model} (explain run {run_id})", fill=(0, 0, 0), font=_font())
        fig.paste(im.convert("RGB"), (0, y + LABEL_H))
        y += LABEL_H + im.height
    return fig


__all__ = ["COLUMNS", "GAP", "HEADER_H", "LABEL_H", "LABEL_W", "cell_box", "figure2", "figure2_size", "figure3",
           "panel_image", "panel_mask"]
