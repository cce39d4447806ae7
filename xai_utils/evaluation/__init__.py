"""Every saliency method scored side by side (`xu.evaluation`): metrics that score maps,
the harness that runs every registered method, bootstrap intervals and comparisons that
name ties, the sanity check, profiling, the reference libraries (Captum, Zennit,
pytorch-grad-cam) and results tables."""

from xai_utils.evaluation import metrics, stats
from xai_utils.evaluation.harness import (
    baseline_maps,
    method_settings,
    peaks_on_own_half,
    per_image,
    pointing_geometry,
    quality,
    run_method,
    summarise,
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
from xai_utils.evaluation.sanity import (
    cascading_randomization,
    parametrized_layers,
    similarities,
    spearman,
    ssim,
)
from xai_utils.evaluation.stats import bootstrap_ci, paired_difference, top, versus
from xai_utils.evaluation.tables import markdown_table, save_tables

__all__ = [
    "baseline_maps", "bootstrap_ci", "cascading_randomization", "forward_backward",
    "markdown_table", "memory_growth", "method_settings", "metrics", "paired_difference",
    "parametrized_layers", "peaks_on_own_half", "per_image", "pointing_geometry", "profile",
    "quality", "run_method", "save_tables", "similarities", "spearman", "speed_rows",
    "SPEED_COLUMNS", "SPEED_FORMATS", "ssim", "stats", "summarise", "synchronize", "timed",
    "top", "versus",
]
