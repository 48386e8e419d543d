"""`python -m gitqueue` runs the command line."""

from gitqueue.cli.main import main

main()
