"""`python -m asr_worker ...`: see asr_worker.cli."""

import sys

from asr_worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
