"""`python -m corpmerge`."""

from corpmerge.cli import main

main()
