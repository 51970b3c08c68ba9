"""`python -m hf_pipeline.cli STAGE ...`: the same command as `run_stage.py` and `hf-pipeline`."""

import sys

from hf_pipeline.cli import main

sys.exit(main())
