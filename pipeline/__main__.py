"""``python -m pipeline`` is the ``var`` command."""
import sys

from pipeline.cli.main import main

sys.exit(main())
