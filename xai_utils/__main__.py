"""`python -m xai_utils explain|score ...`: see `xai_utils.runner.cli`."""

import sys

from xai_utils.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
