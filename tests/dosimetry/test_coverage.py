"""Field-of-view truncation and slice coverage of an sCT: hand-built masks and grids with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dosimetry.coverage import field_of_view_truncation, slice_coverage
from dosimetry.errors import DosimetryError
from models.volume import Volume


def test_field_of_view_truncation_by_hand():
    body = np.zeros((5, 10, 10), dtype=bool)
    body[:, 3:7, 3:7] = True  # inside the image on every slice
    body[2, 0:4, :] = True  # slice 2 runs over the whole first row (10 of the 36 ring pixels)
    body[3, 4:6, 6:10] = True  # slice 3 reaches the last column in 2 pixels
    body[4] = False
    result = field_of_view_truncation(body)
    assert result.body_slice_count == 4
    assert result.truncated_slices == (2, 3) and result.truncated_slice_count == 2
    assert result.truncated_slice_fraction == 0.5
    # Slice 2: row 0 (10) plus rows 1-3 at columns 0 and 9 (6) = 16 of 36 border pixels.
    assert result.max_border_fraction == pytest.approx(16 / 36)
    assert result.border_voxel_count == 16 + 2


def test_slice_coverage_finds_missing_and_shifted_slices():
    mr = Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 100.0))
    same = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 100.0)), mr)
    assert (same.matched_slice_count, same.max_offset_mm, same.in_plane_grid_matches) == (10, 0.0, True)
    assert same.mr_slices_without_sct == () and same.sct_slices_without_mr == ()

    cropped = slice_coverage(Volume(np.zeros((8, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 103.0)), mr)
    assert cropped.matched_slice_count == 8
    assert cropped.mr_slices_without_sct == (0, 9) and cropped.sct_slices_without_mr == ()
    assert cropped.max_offset_mm == pytest.approx(3.0)  # MR slice 0 is one slice from the sCT's first

    shifted = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 101.5)), mr)
    assert shifted.matched_slice_count == 0 and shifted.max_offset_mm == pytest.approx(1.5)

    resampled = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.2, 1.0, 3.0), (0.0, 0.0, 100.0)), mr)
    assert resampled.matched_slice_count == 10 and not resampled.in_plane_grid_matches
    with pytest.raises(DosimetryError, match="tolerance_mm"):
        slice_coverage(mr, mr, tolerance_mm=0.0)
