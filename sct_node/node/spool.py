"""The spool's layout: the one place where the node makes a path, and where it checks one before deleting.

::

    <spool_dir>/
    ├── state.sqlite3             the node's database (sct_node.node.state)
    ├── incoming/                 temporary files of instances being written (*.part; removed at start)
    ├── instances/<series UID>/<SOP Instance UID>.dcm
    └── outputs/job-<N>/          sCT, QA, report and held-back files of one job

Nothing that came from the network becomes part of a path unless it passed
:func:`sct_node.dicom.uids.uid_problem` (digits and dots, at most 64
characters, no empty component): such a name can be neither ``.``, ``..``,
absolute, nor contain a separator. On top of that, every path the node
writes or deletes is checked to lie inside the spool (:meth:`Spool.inside`),
so a bug elsewhere, or a database row edited by hand, cannot point a
deletion outside it. The cleaner deletes only files the database recorded,
removes a series folder only once it is empty, and removes only job folders
under ``outputs/`` that are named ``job-<N>``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from sct_node.dicom.uids import uid_problem
from sct_node.errors import SctNodeError

__all__ = ["Spool", "SpoolPathError"]

logger = logging.getLogger(__name__)

_JOB_DIR = re.compile(r"job-[0-9]+")


class SpoolPathError(SctNodeError):
    """A path the node was about to write or delete is not one it may touch (outside the spool, bad name)."""


class Spool:
    """The folders of one node's spool.

    Parameters
    ----------
    root : pathlib.Path
        ``storage.spool_dir``. Made absolute once, so every path recorded in the database is absolute
        and means the same whatever the working directory of a later command.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.abspath(root))
        self.instances_dir = self.root / "instances"
        self.incoming_dir = self.root / "incoming"
        self.outputs_dir = self.root / "outputs"
        self.state_db = self.root / "state.sqlite3"
        self._real_paths: dict[str, Path] = {}

    def make_folders(self) -> None:
        for folder in (self.instances_dir, self.incoming_dir, self.outputs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # --- making paths -------------------------------------------------------------------------------

    def series_dir(self, series_uid: str) -> Path:
        """``instances/<series UID>``; raises SpoolPathError unless the UID is valid."""
        return self.inside(self.instances_dir / _uid_name(series_uid, "Series Instance UID"), resolve=False)

    def instance_path(self, series_uid: str, sop_instance_uid: str) -> Path:
        """``instances/<series UID>/<SOP Instance UID>.dcm``; raises SpoolPathError unless both UIDs are valid."""
        name = _uid_name(sop_instance_uid, "SOP Instance UID")
        return self.inside(self.series_dir(series_uid) / f"{name}.dcm", resolve=False)

    def job_dir(self, job_id: int) -> Path:
        """``outputs/job-<N>``."""
        if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 0:
            raise SpoolPathError(f"job ID must be a non-negative integer; found {job_id!r}")
        return self.outputs_dir / f"job-{job_id}"

    # --- checking -----------------------------------------------------------------------------------

    def inside(self, path: Path | str, within: Path | None = None, *, resolve: bool = True) -> Path:
        """``path`` made absolute, if it lies strictly inside ``within`` (default: the spool); else SpoolPathError.

        With ``resolve`` (every deletion) symbolic links are resolved, so a link planted in the spool cannot
        lead a deletion elsewhere. Paths made here from validated UIDs are checked lexically
        (``resolve=False``): such a name cannot leave its folder, and resolving every component of every
        received instance's path cost about a tenth of the C-STORE handler's time (py-spy, 470 instances).
        """
        absolute = Path(os.path.abspath(path))
        if resolve:
            base, target = self._real(within or self.root), Path(os.path.realpath(absolute))
        else:
            base, target = Path(os.path.abspath(within or self.root)), absolute
        if target == base or base not in target.parents:
            raise SpoolPathError(f"{absolute} is not inside {base}; refusing to touch it")
        return absolute

    def _real(self, folder: Path) -> Path:
        """The real path of one of the spool's folders, resolved once."""
        key = str(folder)
        if key not in self._real_paths:
            self._real_paths[key] = Path(os.path.realpath(folder))
        return self._real_paths[key]

    # --- removing -----------------------------------------------------------------------------------

    def remove_instance_file(self, path: Path | str) -> bool:
        """Delete one recorded instance file under ``instances/``; False when it was gone already."""
        target = self.inside(path, self.instances_dir)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True

    def remove_series_dir(self, series_uid: str) -> bool:
        """Remove ``instances/<series UID>`` if it is empty (only recorded files are deleted, never a tree)."""
        try:
            folder = self.series_dir(series_uid)
        except SpoolPathError as error:  # a row from before UIDs were checked: its files were removed one by one
            logger.warning("series folder not removed: %s", error)
            return False
        try:
            folder.rmdir()
        except FileNotFoundError:
            return False
        except OSError as error:  # not empty: something the node did not record is in there; leave it
            logger.warning("series folder %s not removed: %s", folder, error.strerror or error)
            return False
        return True

    def remove_job_dir(self, path: Path | str) -> bool:
        """Remove a job's output folder: only ``outputs/job-<N>`` folders, never anything else."""
        target = self.inside(path, self.outputs_dir)
        if target.parent != self.outputs_dir or not _JOB_DIR.fullmatch(target.name):
            raise SpoolPathError(f"{target} is not a job folder (outputs/job-<N>); refusing to remove it")
        if not target.exists():
            return False
        shutil.rmtree(target)
        return True


def _uid_name(uid: str, what: str) -> str:
    problem = uid_problem(uid, what)
    if problem:
        raise SpoolPathError(problem)
    return str(uid)
