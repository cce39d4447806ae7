"""Whole datasets: readers (`datasets`), the zarr store (`store`), `explain_dataset` on one
process or under torchrun (`run`), scoring a store (`score`) and the command line (`cli`)."""

from xai_utils.runner.run import RunSummary, explain_dataset
from xai_utils.runner.store import RunMismatchError

__all__ = ["RunMismatchError", "RunSummary", "explain_dataset"]
