"""What a QA report is drawn from: one immutable record, independent of files.

:class:`ReportData` is filled by :mod:`sct_node.report.context` from a QA
folder and the sCT series; the PDF and the DICOM writers only read it, so
they can be tested on synthetic data without running a model or the QA.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

from dosimetry.qa_result import DvhCurve, QaResult
from dosimetry.verdict import Verdict
from models.volume import Volume

__all__ = ["DvhCurve", "Identifiers", "ReportData", "StructureOutline"]


@dataclass(frozen=True)
class Identifiers:
    """Who and what the report is about (shown in the PDF; never logged).

    Attributes
    ----------
    patient_name, patient_id, patient_birth_date : str
        As in the MR ("" when absent).
    study_instance_uid, study_date, study_description : str
    mr_series_instance_uid, mr_series_description : str
        The source MR series.
    sct_series_instance_uid, sct_series_description : str
        The synthetic CT series.
    frame_of_reference_uid : str
    """

    patient_name: str
    patient_id: str
    patient_birth_date: str
    study_instance_uid: str
    study_date: str
    study_description: str
    mr_series_instance_uid: str
    mr_series_description: str
    sct_series_instance_uid: str
    sct_series_description: str
    frame_of_reference_uid: str


@dataclass(frozen=True)
class StructureOutline:
    """A structure to draw on the figures: a boolean (z, y, x) mask on the sCT grid."""

    name: str
    role: str  # "body", "target", "organ", "bone", "air", "uncertain"
    mask: np.ndarray
    #: RT ROI Interpreted Type from the structure set ("" when absent or not from one).
    interpreted_type: str = ""


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows.

    Attributes
    ----------
    qa : QaResult
        The QA's verdict, reasons, checks and measurements (:mod:`dosimetry.qa_result`); the plan, the
        prescription and the dose reference's name are its ``dose``.
    identifiers : Identifiers
    model_card : dict
        name, version, description, content_hash, intended_use, identity (str values).
    software_version : str
        sct-node version that made the sCT and the QA.
    created : datetime.datetime
        When the QA ran.
    sct : Volume
        Synthetic CT, HU.
    body_mask : numpy.ndarray or None
        The MR body outline on the sCT grid.
    mr, reference_ct, uncertainty_hu : Volume or None
        On the sCT grid (slice for slice) when present.
    dose_sct_gy, dose_reference_gy, dose_difference_percent, gamma : Volume or None
        On the dose grid (same directions as the sCT, coarser spacing); None when no dose was computed.
        ``gamma`` is NaN where it was not evaluated (below the low-dose cut-off).
    dvh_curves : tuple of DvhCurve
    structures : tuple of StructureOutline
        Outlines to draw (body, targets, organs) on the sCT grid.
    reference_notes : tuple of str
        What fetching the QA's reference data from the PACS did (fetched; or not, and what the QA used instead).
    """

    qa: QaResult
    identifiers: Identifiers
    model_card: dict[str, str]
    software_version: str
    created: _dt.datetime
    sct: Volume
    body_mask: np.ndarray | None = None
    mr: Volume | None = None
    reference_ct: Volume | None = None
    uncertainty_hu: Volume | None = None
    dose_sct_gy: Volume | None = None
    dose_reference_gy: Volume | None = None
    dose_difference_percent: Volume | None = None
    gamma: Volume | None = None
    dvh_curves: tuple[DvhCurve, ...] = ()
    structures: tuple[StructureOutline, ...] = field(default_factory=tuple)
    reference_notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        return self.qa.verdict

    @property
    def dose_reference_name(self) -> str:
        """"bulk-density sCT" or "real CT" ("" without a dose)."""
        return self.qa.dose.reference if self.qa.dose is not None else ""

    @property
    def plan_label(self) -> str | None:
        """The plan the doses come from, e.g. "4-field box (template)"."""
        return self.qa.dose.plan.label if self.qa.dose is not None else None

    @property
    def prescription_gy(self) -> float | None:
        """Dose per fraction the differences are expressed against."""
        return self.qa.dose.prescription_gy if self.qa.dose is not None else None

    @property
    def has_dose(self) -> bool:
        return self.dose_sct_gy is not None
