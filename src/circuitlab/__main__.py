"""`python -m circuitlab` runs the same CLI as the `circuitlab` command."""

from circuitlab.cli import main

if __name__ == "__main__":
    main()
