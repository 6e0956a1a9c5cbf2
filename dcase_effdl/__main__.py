"""`python -m dcase_effdl ...` is the same as the `dcase-effdl` command."""

from dcase_effdl.cli import main

raise SystemExit(main())
