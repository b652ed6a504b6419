"""``sct-node hu-reference``: a site's HU reference from real CTs, for the QA's hu_distribution check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sct_node.cli.common import EXIT_OK, Subcommands

if TYPE_CHECKING:
    import numpy as np

    from models.volume import Volume


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``hu-reference`` to ``commands``, with the options every verb takes from ``common``."""
    hu_reference = commands.add_parser(
        "hu-reference", parents=[common], help="build a site's HU reference from real CTs (for the QA's hu_distribution check)",
        description="Build a site's HU reference: the body HU distribution of each real CT (a DICOM CT series folder, "
                    "or a SynthRAD-layout case folder with ct and mask). Use planning CTs of the site's patients, "
                    "several of them (slim and obese, with and without contrast) so the nearest one is near; "
                    "docs/qa.md says what the check can and cannot see.")
    hu_reference.add_argument("cts", type=Path, nargs="+", help="CT series folders or SynthRAD case folders")
    hu_reference.add_argument("--site", choices=("pelvis", "head"), required=True)
    hu_reference.add_argument("--output", "-o", type=Path, required=True, help="reference file (.json)")
    hu_reference.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read each CT with its body outline, write the reference and print how far apart the CTs are."""
    import numpy as np

    from dosimetry.hu_reference import build_hu_reference
    from dosimetry.outline import sct_body_outline
    from models.fileio import write_atomic
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.uids import CT_IMAGE_STORAGE
    from sct_node.errors import InputError, OutputError

    cts: list[tuple[str, Volume, np.ndarray]] = []
    for folder in args.cts:
        case = [folder / f"{name}{ext}" for name in ("ct", "mask") for ext in (".mha", ".nii.gz")
                if (folder / f"{name}{ext}").is_file()]
        if len(case) == 2:  # SynthRAD layout: the CT and its body mask
            from models.learned.data import load_cases

            (loaded,) = load_cases(folder)
            assert loaded.ct is not None  # the folder holds a ct image
            cts.append((folder.name, loaded.ct, np.asarray(loaded.body, dtype=bool)))
        elif folder.is_dir():
            series = read_series([folder], sop_classes=[CT_IMAGE_STORAGE])
            cts.append((folder.name, series.volume, sct_body_outline(series.volume)))
        else:
            raise InputError(f"{folder}: not a folder; expected a DICOM CT series folder or a SynthRAD case folder")
    reference = build_hu_reference(args.site, cts, source=f"sct-node hu-reference from {len(cts)} CT(s): "
                                                          + ", ".join(case_id for case_id, _, _ in cts))
    text = (json.dumps(reference.to_json(), indent=1) + "\n").encode()
    try:
        write_atomic(args.output, lambda stream: stream.write(text))
    except OSError as error:
        raise OutputError(f"cannot write the HU reference {args.output}: {error}") from None
    spread = reference.leave_one_out_hu()
    print(f"HU reference for {args.site}: {len(cts)} CT(s) -> {args.output}")
    if spread:
        print(f"  each CT's distance to its nearest other: {', '.join(f'{v:.0f}' for v in spread)} HU "
              f"(the check's default limits: pass <= 40, fail > 80 HU)")
    return EXIT_OK
