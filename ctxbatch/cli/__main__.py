"""`python -m ctxbatch.cli` is the `ctxbatch` command."""

from ctxbatch.cli import main

main()
