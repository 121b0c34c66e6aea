"""`python -m tuneloop` and `accelerate launch -m tuneloop` enter the CLI here."""

from tuneloop.cli import main

if __name__ == "__main__":
    main()
