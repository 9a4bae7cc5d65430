"""`python -m medal` (and `torchrun -m medal`) runs the CLI."""

from medal.cli import main

main()
