"""``python -m flows run …`` — the entry point for ``ray job submit --working-dir . -- python -m flows run …``."""
import sys

from flows.cli import main

sys.exit(main())
