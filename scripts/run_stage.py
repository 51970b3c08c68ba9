#!/usr/bin/env python
"""Run one FineInstructions pipeline stage: `python scripts/run_stage.py --help`."""

import sys

from hf_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
