"""The radiograph-fracture pipeline: one package, everything particular to it.

- `select`: which objects of a study it analyses (not its own results; the model's intended use
  read from the header);
- `model`: the bundle as the pipeline runs it (letterboxed input, operating points, limits);
- `pipeline`: pixels → model → `findings` (registered as "radiograph-fracture");
- `template`: its SR template (`sr_templates/radiograph-fracture.yaml`);
- `results`: the objects it sends: `sr` (TID 1500), `seg` (on request), `gsps` and `capture`
  (overlays on request); `preview`: the PNG `fracnode analyze` and the dashboard show.

Importing the package registers the pipeline (node.pipelines.BUILTIN_MODULES).
"""

from node.pipelines.radiograph.findings import Findings, ImageFinding, RegionFinding, summarize
from node.pipelines.radiograph.pipeline import NAME, RadiographFracturePipeline

__all__ = ["NAME", "Findings", "ImageFinding", "RadiographFracturePipeline", "RegionFinding", "summarize"]
