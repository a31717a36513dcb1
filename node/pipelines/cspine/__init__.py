"""The cspine-fracture pipeline: one package, everything particular to it.

- `select`: which CT series of a study it analyses, and why every other is skipped;
- `models`: the two bundles together (`vertebrae`: C1–C7 by sliding window; `vertebra_fracture`:
  a probability per vertebra from a crop classifier);
- `pipeline`: select → HU volume (node.imaging.volume) → models → `findings` (registered as
  "cspine-fracture");
- `template`: its SR template (`sr_templates/cspine-fracture.yaml`);
- `results`: the objects it sends, `seg` (one segment per vertebra) and `sr` (TID 1500, with
  `slices`: where each vertebra is on the CT's own slices); `preview`: the dashboard's sagittal view.

Importing the package registers the pipeline (node.pipelines.BUILTIN_MODULES).
"""

from node.pipelines.cspine.findings import CSpineFindings, VertebraFinding, summarize, vertebra_name
from node.pipelines.cspine.pipeline import (
    NAME,
    NO_CERVICAL_VERTEBRAE,
    NO_SERIES,
    CSpineFracturePipeline,
)

__all__ = [
    "NAME",
    "NO_CERVICAL_VERTEBRAE",
    "NO_SERIES",
    "CSpineFindings",
    "CSpineFracturePipeline",
    "VertebraFinding",
    "summarize",
    "vertebra_name",
]
