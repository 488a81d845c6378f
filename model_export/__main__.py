"""`python -m model_export` (or `mailrec-train`): the training CLI, `model_export.cli`."""

from model_export.cli import main

raise SystemExit(main())
