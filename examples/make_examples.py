"""Generate the example inputs in this folder from sctconv's own procedural phantom.

    python examples/make_examples.py

Writes ``phantom_mr.nii.gz`` (simulated T1/T2-weighted MR), ``phantom_cbct.nii.gz`` (simulated CBCT),
``phantom_ct.nii.gz`` (the phantom's CT, the reference the sCT can be compared with) and
``phantom_mr_dicom/`` (the same MR as an MR Image Storage series). No patient data is involved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from sctconv.simulation.simulate import make_phantom, simulate_cbct, simulate_mr

HERE = Path(__file__).resolve().parent
SEED = 2025


def write_mr_series(image: sitk.Image, folder: Path) -> None:
    """Write an axial, head-first-supine MR series of ``image`` (identity direction) with pydicom."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    array = np.clip(np.round(sitk.GetArrayFromImage(image)), 0, 65535).astype(np.uint16)
    sx, sy, sz = image.GetSpacing()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, plane in enumerate(array):
        x, y, z = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Example", "SCTCONV-EX1", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20250101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series, 3
        ds.SeriesDescription, ds.PatientPosition, ds.BodyPartExamined = "T1 phantom (simulated)", "HFS", "ABDOMEN"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber = "sctconv example generator", k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "4", "10", "1"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (x, y, z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{sy:.4f}", f"{sx:.4f}"]
        ds.SliceThickness = f"{sz:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"MR.{k + 1:04d}.dcm", enforce_file_format=True)


def main() -> None:
    rng = np.random.default_rng(SEED)
    ct, _ = make_phantom(rng, shape=(40, 96, 112), spacing=(2.5, 2.5, 3.0))
    mr = simulate_mr(ct, rng)
    cbct = simulate_cbct(ct, rng)
    sitk.WriteImage(ct, str(HERE / "phantom_ct.nii.gz"), useCompression=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(mr), sitk.sitkInt16), str(HERE / "phantom_mr.nii.gz"), useCompression=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(cbct), sitk.sitkInt16), str(HERE / "phantom_cbct.nii.gz"),
                    useCompression=True)
    write_mr_series(mr, HERE / "phantom_mr_dicom")
    print(f"examples written to {HERE}")


if __name__ == "__main__":
    main()
