"""``python -m benchmarks``: see ``benchmarks.cli``."""

from benchmarks.cli import main

# The guard matters: load-generator workers are spawned processes, which import the main module again.
if __name__ == "__main__":
    main()
