"""The automatic body mask (sctconv.preprocessing.body_mask) on real volumes of ../shared/data.

Chest CTs (LIDC-IDRI-0001 at 2 mm, the pyradiomics chest CT at 512 x 512 x 61), as CT and as CBCT
simulated with a cylindrical field of view that cuts through the chest wall and the lungs: the lungs stay
inside the mask, the couch and the air under the back stay outside. Real T1 head MRs: the whole head,
scalp, skull and sinuses included, is in the mask and nothing bright is left outside it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sctconv.hu import CT_BODY_THRESHOLD_HU
from sctconv.preprocessing.body_mask import body_mask, mr_threshold
from sctconv.simulation.simulate import cbct_field_of_view, simulate_cbct
from tests.helpers import shared_data

LIDC_LUNG_LABELS = (10, 11, 12, 13, 14, 16)  # lung lobes and trachea (totalseg_structures.csv)
LUNG_HU = -400.0
CHESTS = {  # name: (file, the CBCT's field-of-view radius in mm: it cuts the lungs, the couch stays in view)
    "lidc": ("lidc_idri_0001_chest_ct/ct_2mm.nii.gz", 115.0),
    "pyradiomics": ("pyradiomics_chest_ct/lung2_image.nrrd", 135.0),
}


def _read(relative: str) -> sitk.Image:
    """A volume as float32 in LPS orientation: array axes (z, y, x), y growing towards the back."""
    image = sitk.ReadImage(str(shared_data(*relative.split("/"))), sitk.sitkFloat32)
    return sitk.DICOMOrient(image, "LPS")


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _enclosed_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(section) for section in mask])


def _lungs(name: str, ct: sitk.Image) -> np.ndarray:
    """Reference lungs: the label map's lungs and trachea (LIDC), else the CT's dark voxels that the
    largest piece of tissue encloses in their slice (the CT is not cut by any field of view)."""
    if name == "lidc":
        labels = sitk.DICOMOrient(sitk.ReadImage(str(shared_data("lidc_idri_0001_chest_ct",
                                                                 "totalseg_mask_2mm.nii.gz"))), "LPS")
        assert labels.GetSize() == ct.GetSize()
        return np.isin(sitk.GetArrayFromImage(labels), LIDC_LUNG_LABELS)
    hu = sitk.GetArrayViewFromImage(ct)
    tissue = np.stack([_largest(section > LUNG_HU) for section in hu])
    return _enclosed_per_slice(tissue) & (hu < LUNG_HU)


def _couch(hu: np.ndarray) -> np.ndarray:
    """Couch voxels: above the body threshold, apart from the body (the largest 3D piece above it and
    what that encloses in each slice) and behind the body's centre."""
    bright = hu > CT_BODY_THRESHOLD_HU
    body = _largest(bright)
    rows = np.nonzero(body)[1]
    behind = np.arange(hu.shape[1])[None, :, None] > rows.mean()
    return bright & ~_enclosed_per_slice(body) & behind


def _under_the_back(hu: np.ndarray, margin: int) -> np.ndarray:
    """Everything (air, couch) more than ``margin`` rows behind the body's last row, column by column."""
    body = _largest(hu > CT_BODY_THRESHOLD_HU)
    rows = np.arange(hu.shape[1])[None, :, None]
    last = np.where(body.any(axis=1), (body * rows).max(axis=1), hu.shape[1])  # (z, x)
    return rows > last[:, None, :] + margin


@pytest.fixture(scope="module", params=sorted(CHESTS))
def chest(request) -> tuple[str, sitk.Image, np.ndarray]:
    name = request.param
    ct = _read(CHESTS[name][0])
    return name, ct, _lungs(name, ct)


def test_chest_ct_has_the_lungs_inside_and_the_couch_outside(chest):
    name, ct, lungs = chest
    started = time.perf_counter()
    mask = sitk.GetArrayFromImage(body_mask(ct, "ct")).astype(bool)
    seconds = time.perf_counter() - started
    hu = sitk.GetArrayViewFromImage(ct)
    couch = _couch(hu)
    assert lungs.sum() > 100_000 and couch.sum() > 10_000  # what is measured is there
    assert mask[lungs].mean() >= 0.98, (name, mask[lungs].mean())
    assert 1.0 - mask[couch].mean() >= 0.95, (name, mask[couch].mean())
    assert seconds < 30.0, seconds  # a few seconds for 512 x 512 x 61 on one CPU core


def test_truncated_cbct_has_the_lungs_inside_and_the_air_under_the_back_outside(chest):
    """The field of view cuts through the chest wall: the lungs reach its edge and with it, in the array,
    the outside (-1000) like the air around the body does. They are inside all the same."""
    name, ct, lungs = chest
    radius = CHESTS[name][1]
    cbct = simulate_cbct(ct, np.random.default_rng(int(radius)), fov_radius_mm=radius)
    view = cbct_field_of_view(cbct)
    rim = view & ~ndimage.binary_erosion(view, np.ones((1, 3, 3), dtype=bool))
    assert (lungs & rim).sum() > 1000, "the field of view does not cut the lungs"
    mask = sitk.GetArrayFromImage(body_mask(cbct, "cbct")).astype(bool)
    assert not (mask & ~view).any()
    lungs_in_view = lungs & view
    assert mask[lungs_in_view].mean() >= 0.98, (name, mask[lungs_in_view].mean())
    hu = sitk.GetArrayViewFromImage(ct)
    margin = int(np.ceil(4.0 / ct.GetSpacing()[1]))  # the CBCT's blur moves the skin by a voxel or two
    behind = _under_the_back(hu, margin) & view
    couch = _couch(hu) & view
    assert behind.sum() > 1000
    assert 1.0 - mask[behind].mean() >= 0.95, (name, mask[behind].mean())
    if couch.sum() > 100:
        assert 1.0 - mask[couch].mean() >= 0.95, (name, mask[couch].mean())


@pytest.mark.parametrize("name", ["brain1", "brain2"])
def test_mr_head_mask_holds_the_whole_head(name):
    """T1 head MRs (6.5 mm slices): cortical bone is as dark as the air around the head. The mask has no
    holes in any slice and leaves no bright tissue (scalp, ears, face) outside it, so the dark skull and
    sinuses between scalp and brain are inside; and it does not spread into the background."""
    image = _read(f"pyradiomics_mr_brain_breast/{name}_image.nrrd")
    mask = sitk.GetArrayFromImage(body_mask(image, "mr")).astype(bool)
    values = sitk.GetArrayViewFromImage(image)
    bright = values > mr_threshold(values)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        assert not (ndimage.binary_fill_holes(mask[k]) & ~mask[k]).any(), (name, k)
    reach = int(round(3.0 / image.GetSpacing()[0]))  # 3 mm in-plane
    grown = ndimage.binary_dilation(mask, np.ones((1, 3, 3), dtype=bool), iterations=reach)
    assert (bright & ~grown).sum() <= 0.002 * (bright & mask).sum()
    head = _enclosed_per_slice(ndimage.binary_closing(_largest(bright), np.ones((1, 5, 5), dtype=bool)))
    near_head = ndimage.binary_dilation(head, np.ones((1, 3, 3), dtype=bool), iterations=reach)
    assert (mask & ~near_head).sum() <= 0.01 * mask.sum()
    # The skull and the sinuses: dark voxels inside, a few percent of the head at least.
    assert (mask & ~bright).sum() >= 0.02 * mask.sum()


def test_mask_does_not_depend_on_how_the_volume_is_stored():
    """The same truncated CBCT stored sagittally (slices along x): the mask is the same, because the slice
    axis along the body is taken from the image's direction, not from the array's order."""
    ct = _read(CHESTS["lidc"][0])
    cbct = simulate_cbct(ct, np.random.default_rng(7), fov_radius_mm=CHESTS["lidc"][1])
    axial = sitk.GetArrayFromImage(body_mask(cbct, "cbct"))
    sagittal = sitk.PermuteAxes(cbct, [2, 1, 0])
    again = np.transpose(sitk.GetArrayFromImage(body_mask(sagittal, "cbct")), (2, 1, 0))
    np.testing.assert_array_equal(again, axial)
