"""`python -m ctxbatch` is the `ctxbatch` command."""

from ctxbatch.cli import main

main()
