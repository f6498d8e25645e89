"""``python -m corpusflow run …``: the CLI, also the entry point of ``ray job submit … -- python -m corpusflow run …``."""
import sys

from corpusflow.flows.cli import main

sys.exit(main())
