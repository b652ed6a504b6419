"""The closing text pages: the parts of the report that are absent and why, and the limitations of the QA."""

from __future__ import annotations

from sct_node.report.data import ReportData
from sct_node.report.pdf.layout import _Block, _heading, _paragraph


def _closing_blocks(data: ReportData) -> list[_Block]:
    blocks: list[_Block] = []
    if not data.has_dose:
        blocks.append(_heading("Dose"))
        blocks += _paragraph("No dose was computed — dose comparison not run: the QA ran without a dose "
                             "calculation (dose switched off for this run or route), so there is no dose, "
                             "dose-difference or gamma map and no DVH curve. The verdict rests on the image checks "
                             "alone.")
    elif not data.dvh_curves:
        blocks.append(_heading("DVH"))
        template = data.qa.dose is not None and data.qa.dose.plan.is_template
        blocks += _paragraph("No DVH curves: the QA had no target or organ at risk (no RT Structure Set was routed "
                             "with the MR or given to `sct-node qa --structures`)"
                             + (", so the template plan was placed on the body centre and normalised at its "
                                "isocentre." if template else "."))
    card = data.model_card
    sources: list[tuple[str, str]] = []
    for check in data.qa.checks:
        if check.source and check.source not in [s for _, s in sources]:
            sources.append((check.name, check.source))
    if data.has_dose:
        plan = f"The doses here come from {data.plan_label or 'an unnamed plan'}."
        reference = f"This report's dose reference: {data.dose_reference_name or 'not named'}."
    else:
        plan = reference = "No dose was computed for this report."
    if card.get("known") == "no" or card.get("identity", "unknown") == "unknown":
        synthetic = ("It was computed from an MR by a model this report does not know (the QA was run by hand, "
                     "without the model card); it is marked Synthetic Data and was not measured. Check the model "
                     "and its intended use before relying on it.")
    elif card.get("known") == "header":
        synthetic = (f"It was computed from the MR by the model {card.get('name', '?')} {card.get('version', '')} "
                     f"({card.get('identity', '')}), as the sCT's Contributing Equipment says; the model card itself "
                     "was not available to this report (hand-run qa/report), so its intended use is not shown here. "
                     "It is marked Synthetic Data; it was not measured.")
    else:
        synthetic = (f"It was computed from the MR by the model {card.get('name', '?')} {card.get('version', '')} "
                     f"({card.get('identity', '')}) and is marked Synthetic Data; it was not measured. Intended use "
                     f"of the model: {card.get('intended_use', 'not stated')}")
    items = [
        ("The sCT is synthetic.", synthetic),
        ("The dose engine is for relative comparison only.",
         ("It is a fast pencil-beam-like engine that computes the same plan on two images: ray-traced "
          "water-equivalent (radiological) depth through the density, the measured 6 MV depth dose of an Elekta "
          "Agility, inverse square, jaw and MLC apertures per control point with a head-scatter factor each, and "
          "depth-dependent Gaussian penumbra and phantom scatter fitted to measured profiles and output factors "
          "(docs/qa.md: output factors 2 x 2 to 40 x 40 cm within 0.5 %, depth doses within 0.8 %, penumbrae "
          "within 0.6 mm of the commissioning data). It does not model electron transport (no build-down or "
          "build-up at interfaces, no lateral electron disequilibrium in lung), full heterogeneity scatter "
          "(lateral scaling of scatter with density), MLC transmission and tongue-and-groove, wedges, FFF beams "
          "or energies other than 6 MV. Do not use its absolute doses for planning; use its differences between "
          "two images of the same patient.")),
        ("Template plans are not clinical plans.",
         (f"{plan} A sCT that passes with a box may still differ for a highly modulated plan near bone or "
          "air.")),
        ("The bulk-density reference checks bone and soft-tissue assignment only.",
         ("It shares the sCT's body outline and bone mask, so it cannot detect an outline or bone-shape error; "
          f"only the real-CT comparison (commissioning) and the outline checks can. {reference}")),
        ("HU checks judge plausibility, not truth.",
         ("Tissue fractions, the soft-tissue peak, the fat share, bone in every slice and out-of-range values say "
          "whether the sCT looks like a CT of its site; "
          + ("the HU errors themselves are measured here only because a real CT was given (image metrics "
             "table); a routine sCT has none. " if data.reference_ct is not None or
             data.qa.image_metrics is not None else
             "without a real CT, as here, no HU error can be measured. ")
          + "Tissue classes and thresholds are generic defaults for head and pelvis: commission your own per site "
            "and scanner.")),
        ("Gamma and DVH thresholds.",
         ("Gamma 2 %/2 mm (global, 10 % low-dose cut-off) and DVH differences in % of the prescription are judged "
          "against the limits in the checks table; the sources of every check's limits follow.")),
    ]
    blocks.append(_heading("Limitations"))
    for lead, body in items:
        blocks += _paragraph(f"{lead} {body}", 8.5, indent_in=0.25, bullet="•")
    for name, source in sources:
        blocks += _paragraph(f"{name}: {source}", 7.5, indent_in=0.5, bullet="–", space_after_in=0.02)
    blocks += _paragraph("This report is a quality-assurance aid for a medical physicist; the images are "
                         "synthetic and not for diagnosis.", 8.5, bold=True)
    return blocks
