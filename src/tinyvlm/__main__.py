"""`python -m tinyvlm`: the command line (also what torchrun launches: -m tinyvlm train)."""

from tinyvlm.cli import main

main()
