"""Whole datasets: readers (`datasets`), the checks before a run (`checks`), the zarr store
(`store`), `explain_dataset` on one process or under torchrun (`run`), scoring a store
(`score`) and the command line (`cli`)."""

from xai_utils.runner.checks import ConfigError, SystematicFailure
from xai_utils.runner.run import RunSummary, explain_dataset
from xai_utils.runner.store import RunMismatchError, StoreBusyError

__all__ = ["ConfigError", "RunMismatchError", "RunSummary", "StoreBusyError",
           "SystematicFailure", "explain_dataset"]
