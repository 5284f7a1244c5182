"""Sample grids: where each image lands, the class rows of a conditional grid, and how much one PNG shows."""

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.run import data, images


def test_class_cells_start_a_row_per_class_and_wrap_long_classes():
  labels = np.array([3, 7, 3, 7, 3, 7, 3])  # classes drawn in turn: 3 four times, 7 three times
  cells, columns = images.class_cells(labels, max_columns=2)
  assert columns == 2
  # Class 3 (first seen) fills rows 0-1 (cells 0, 1, 2, 3); class 7 starts row 2 (cells 4, 5, 6).
  np.testing.assert_array_equal(cells, [0, 4, 1, 5, 2, 6, 3])
  cells, columns = images.class_cells(labels, max_columns=16)
  assert columns == 4
  np.testing.assert_array_equal(cells, [0, 4, 1, 5, 2, 6, 3])


def test_image_grid_places_every_image_in_its_cell_and_leaves_the_rest_white():
  tiles = np.stack([np.full((2, 3, 1), v, np.uint8) for v in (10, 20, 30)])
  grid = images.image_grid(tiles, columns=2, cells=np.array([0, 3, 1]), padding=1, min_cell=4)
  scale, h, w = 2, 4, 6  # 2x3 images enlarged to at least 4 pixels: x2
  assert grid.shape == (2 * (h + 1) + 1, 2 * (w + 1) + 1, 3)
  cell = lambda r, c: grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w]
  np.testing.assert_array_equal(cell(0, 0), 10)
  np.testing.assert_array_equal(cell(0, 1), 30)
  np.testing.assert_array_equal(cell(1, 1), 20)
  np.testing.assert_array_equal(cell(1, 0), 255)  # no image there
  del scale


def test_a_square_grid_by_default():
  tiles = np.zeros((5, 8, 8, 3), np.uint8)
  grid = images.image_grid(tiles, padding=0, min_cell=8)
  assert grid.shape == (2 * 8, 3 * 8, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows


@pytest.mark.parametrize("n", [100, 1500])
def test_save_samples_shows_every_sample_up_to_the_cap(tmp_path, n):
  info = data.DatasetInfo("digits", (8, 8, 1), 10, True)
  samples = np.linspace(-1, 1, n * 64, dtype=np.float32).reshape(n, 8, 8, 1)
  path = str(tmp_path / "grid.png")
  shown = images.save_samples(samples, path, info, "digits")
  assert shown == min(n, images.MAX_SHOWN)
  width, height = Image.open(path).size
  cols = int(np.ceil(np.sqrt(shown)))
  rows = int(np.ceil(shown / cols))
  assert (width, height) == (cols * 66 + 2, rows * 66 + 2)  # 8x8 enlarged 8x to 64 pixels, 2 of padding


def test_a_conditional_grid_is_not_one_strip(tmp_path):
  """512 samples of 10 classes: one block of rows per class, at most MAX_COLUMNS wide."""
  info = data.DatasetInfo("digits", (8, 8, 1), 10, True)
  labels = np.arange(512) % 10
  path = str(tmp_path / "grid.png")
  assert images.save_samples(np.zeros((512, 8, 8, 1), np.float32), path, info, "digits", labels=labels) == 512
  width, height = Image.open(path).size
  per_class = int(np.ceil(52 / images.MAX_COLUMNS))  # classes 0 and 1 have 52 samples, the rest 51
  assert width == images.MAX_COLUMNS * 66 + 2
  assert height == 10 * per_class * 66 + 2


def test_a_conditional_grid_names_each_class_left_of_its_first_row(tmp_path):
  """Two classes of 20 samples wrap onto two rows each: the names stand in a white margin at rows 0 and 2 only."""
  info = data.DatasetInfo("folder", (8, 8, 3), 2, True, ("cat", "horse"))
  path = str(tmp_path / "grid.png")
  images.save_samples(np.ones((40, 8, 8, 3), np.float32), path, info, "folder", labels=np.arange(40) % 2)
  grid = np.asarray(Image.open(path))
  margin = grid.shape[1] - (images.MAX_COLUMNS * 66 + 2)
  assert margin == 6 * len("horse") + 8
  assert (grid[:, margin:] == 255).all()  # the samples: white images (1.0), white padding
  inked = [r for r in range(4) if (grid[2 + 66 * r: 2 + 66 * (r + 1), :margin] < 128).any()]
  assert inked == [0, 2]
  untitled = images.image_grid(np.zeros((4, 8, 8, 3), np.uint8), columns=2, min_cell=8)
  assert untitled.shape == (2 * 10 + 2, 2 * 10 + 2, 3)


def test_long_and_non_ascii_class_names_are_shortened_for_the_grid(tmp_path):
  info = data.DatasetInfo("folder", (8, 8, 3), 2, True, ("chat noir à poil long très long", "犬"))
  path = str(tmp_path / "grid.png")
  images.save_samples(np.ones((4, 8, 8, 3), np.float32), path, info, "folder", labels=np.arange(4) % 2)
  margin = np.asarray(Image.open(path)).shape[1] - (2 * 66 + 2)
  assert margin == 6 * 24 + 8  # 24 characters at most
