"""``python -m services.beam_launcher.report``: the warehouse summary (see :mod:`.summary`)."""

import sys

from services.beam_launcher.report.summary import main

sys.exit(main())
