"""Seeded paired MR/CT phantoms of the head and the male pelvis.

Ground truth for tests, demos and training the default models, since no
public paired MR/CT data may ship with the project::

    from models.phantoms import generate_phantom, write_synthrad_case

    phantom = generate_phantom("pelvis", seed=7)
    write_synthrad_case(phantom, Path("cases/1PA007"), mr="t2")
"""

from __future__ import annotations

from models.phantoms.anatomy import Anatomy, Site, build_anatomy
from models.phantoms.generator import (
    DEFAULT_GRIDS,
    MIN_SHAPE,
    STRUCTURE_STYLES,
    Phantom,
    PhantomStructure,
    StructureKind,
    generate_phantom,
)
from models.phantoms.imaging import (
    T1_WEIGHTED,
    T2_WEIGHTED,
    SpinEchoSequence,
    bias_field,
    simulate_ct,
    simulate_mr,
    spin_echo_signal,
)
from models.phantoms.synthrad import (
    SynthradCase,
    SynthradImages,
    read_synthrad_case,
    write_synthrad_case,
)
from models.phantoms.tissues import TISSUE_PROPERTIES, Tissue, TissueProperties, property_lookup

__all__ = [
    "DEFAULT_GRIDS",
    "MIN_SHAPE",
    "STRUCTURE_STYLES",
    "T1_WEIGHTED",
    "T2_WEIGHTED",
    "TISSUE_PROPERTIES",
    "Anatomy",
    "Phantom",
    "PhantomStructure",
    "Site",
    "SpinEchoSequence",
    "StructureKind",
    "SynthradCase",
    "SynthradImages",
    "Tissue",
    "TissueProperties",
    "bias_field",
    "build_anatomy",
    "generate_phantom",
    "property_lookup",
    "read_synthrad_case",
    "simulate_ct",
    "simulate_mr",
    "spin_echo_signal",
    "write_synthrad_case",
]
