"""`python -m onedet` (and `torchrun -m onedet`) runs the command line."""

from onedet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
