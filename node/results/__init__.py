"""DICOM results (SR, SEG, GSPS, secondary capture) built from findings with highdicom."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# highdicom warns about person names it finds unusual (e.g. a single-component Referring
# Physician's Name copied from the source). The warning quotes the name, which must never reach a
# log, and it is about the source, which the node copies unchanged.
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


@contextmanager
def no_name_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
        yield
