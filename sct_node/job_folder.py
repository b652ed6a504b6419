"""The layout of a job's output folder (``spool/outputs/job-N/``): one name for each sub-folder.

The node's roles, the report bundle, the CLI and the demo all find a job's outputs here::

    job-N/
    ├── guard.json   the input guard's result
    ├── sct/         the sCT series                       (delivered)
    ├── qa/          qa.json and qa_arrays.npz            (kept, not delivered)
    ├── report/      SR, Encapsulated PDF, the PDF itself (delivered; the bare PDF is not DICOM)
    ├── rt/          RT Structure Set, RT Plan, RT Dose   (delivered)
    └── held/        sct/ and rt/ held back after a QA FAIL (never delivered until released)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobFolder"]


class JobFolder(StrEnum):
    """A sub-folder of a job's output folder; ``output_dir / JobFolder.SCT`` is its path."""

    SCT = "sct"
    QA = "qa"
    REPORT = "report"
    RT = "rt"
    #: What the dispatcher never sends: the sCT and its RT objects held back after a QA FAIL.
    HELD = "held"

    @classmethod
    def held_back(cls) -> tuple[JobFolder, ...]:
        """The folders a hold moves into ``held/`` (and a release moves back)."""
        return (cls.SCT, cls.RT)
