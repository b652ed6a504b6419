"""The one way a dosimetry result becomes JSON and comes back: typed, validated, NaN-safe.

Results are frozen dataclasses (:class:`dosimetry.qa_result.QaResult` and the
measurements it is made of). :func:`to_record` turns one into JSON-ready
values (lists, dicts, str, numbers); :func:`from_record` validates such values
against the dataclass's type hints with pydantic and builds the dataclass
again, or raises a :class:`~dosimetry.errors.DosimetryError` that says which
field is wrong. No reader re-validates dicts by hand.

Non-finite floats are measurements too (a check that could not be measured is
NaN, the PSNR of identical images is infinite) and standard JSON has no
literal for them: they are written as the strings ``"NaN"``, ``"Infinity"``
and ``"-Infinity"``, which pydantic reads back into floats. ``None`` stays
``null`` and means "not applicable" (e.g. the mean HU of a tissue class with
no voxel), never "not measured".
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Any, TypeVar

import numpy as np
import pydantic

from dosimetry.errors import DosimetryError

__all__ = ["from_record", "to_record"]

T = TypeVar("T")

_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


@functools.cache
def _adapter(cls: type[Any]) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(cls)


def to_record(value: Any) -> Any:
    """JSON-ready values of a dataclass (or list, tuple, dict of them): what :func:`from_record` reads back."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        return _NON_FINITE.get(number, number)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, dict):
        return {str(key): to_record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_record(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_record(getattr(value, name)) for name in value.__dataclass_fields__}
    raise DosimetryError(f"cannot record a value of type {type(value).__name__}")


def from_record(cls: type[T], value: Any, what: str) -> T:
    """``cls`` built from JSON-ready values, validated against its type hints.

    Raises
    ------
    DosimetryError
        Naming ``what`` and every field that is missing or malformed.
    """
    try:
        return _adapter(cls).validate_python(value)  # type: ignore[arg-type]  # mypy#11470: a type[T] is hashable
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc']) or '(top)'}: {item['msg']}"
                             for item in error.errors()[:5])
        more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise DosimetryError(f"{what} is malformed: {problems}{more}") from None
