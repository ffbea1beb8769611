"""`python -m speckv_hf`: the `speckv` command line."""

from .cli import main

main()
