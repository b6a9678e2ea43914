"""`python -m corpmerge` (also what `accelerate launch -m corpmerge` runs)."""

from corpmerge.cli import main

main()
