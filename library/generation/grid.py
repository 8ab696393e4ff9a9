"""Labelled x/y comparison grids: one PNG, column labels on top, row labels on the left.

Layout (all sizes in pixels): a header band of HEADER rows above the cells and a label column of
`label_width(...)` pixels on their left; cells are placed edge to edge, so the grid is
label_width + columns * cell width wide and HEADER + rows * cell height high.
"""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

HEADER = 20
MIN_LABEL_WIDTH = 48
CHAR_WIDTH = 6  # PIL's default bitmap font
MAX_LABEL_CHARS = 24


def _font():
    return ImageFont.load_default()


def _fit(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "~"


def label_width(row_labels) -> int:
    longest = max((len(_fit(t)) for t in row_labels), default=0)
    return max(MIN_LABEL_WIDTH, longest * CHAR_WIDTH + 8)


def make_grid(cells: list[list[Image.Image]], column_labels: list[str], row_labels: list[str]) -> Image.Image:
    """cells[row][column] -> one RGB image with labels."""
    cell_w, cell_h = cells[0][0].size
    left = label_width(row_labels)
    grid = Image.new("RGB", (left + cell_w * len(column_labels), HEADER + cell_h * len(row_labels)), "white")
    draw, font = ImageDraw.Draw(grid), _font()
    for column, text in enumerate(column_labels):
        draw.text((left + column * cell_w + 2, 4), _fit(text), fill="black", font=font)
    for row, text in enumerate(row_labels):
        draw.text((4, HEADER + row * cell_h + 4), _fit(text), fill="black", font=font)
        for column, cell in enumerate(cells[row]):
            grid.paste(cell.convert("RGB"), (left + column * cell_w, HEADER + row * cell_h))
    return grid


def cell_box(column: int, row: int, cell_size, row_labels) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a cell in a grid made by make_grid."""
    left = label_width(row_labels) + column * cell_size[0]
    top = HEADER + row * cell_size[1]
    return left, top, left + cell_size[0], top + cell_size[1]
