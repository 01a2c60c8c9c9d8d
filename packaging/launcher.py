"""Entry script of the frozen app: the same dispatch as the `invoke-nodes` console script."""
import multiprocessing
import sys

if __name__ == "__main__":
    # a child process started by multiprocessing re-runs this executable; freeze_support hands it to
    # multiprocessing instead of opening a second canvas
    multiprocessing.freeze_support()
    from app.main import main

    sys.exit(main())
