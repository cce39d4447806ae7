"""Every saliency method scored side by side (`xu.evaluation`): metrics that score maps,
the harness that runs every registered method, the sanity check, profiling, the
reference libraries (Captum, Zennit, pytorch-grad-cam) and results tables."""

from xai_utils.evaluation import metrics
from xai_utils.evaluation.harness import (
    baseline_maps,
    method_settings,
    peaks_on_own_half,
    pointing_geometry,
    quality,
    run_method,
)
from xai_utils.evaluation.profiling import (
    SPEED_COLUMNS,
    SPEED_FORMATS,
    forward_backward,
    memory_growth,
    profile,
    speed_rows,
    synchronize,
    timed,
)
from xai_utils.evaluation.sanity import cascading_randomization, parametrized_layers, spearman
from xai_utils.evaluation.tables import markdown_table, save_tables

__all__ = [
    "baseline_maps", "cascading_randomization", "forward_backward", "markdown_table",
    "memory_growth", "method_settings", "metrics", "parametrized_layers", "peaks_on_own_half",
    "pointing_geometry", "profile", "quality", "run_method", "save_tables", "spearman",
    "speed_rows", "SPEED_COLUMNS", "SPEED_FORMATS", "synchronize", "timed",
]
