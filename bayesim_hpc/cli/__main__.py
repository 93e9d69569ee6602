"""``python -m bayesim_hpc.cli``."""

from . import main

if __name__ == "__main__":
    main()
