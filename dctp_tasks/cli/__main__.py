"""``python -m dctp_tasks.cli``: the ``dctp`` command without the console script."""

import sys

from dctp_tasks.cli import main

sys.exit(main())
