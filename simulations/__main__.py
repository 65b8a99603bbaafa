"""``python -m simulations`` runs the fedsynth command."""

from fedsynth.simulations.cli import main

if __name__ == "__main__":
    main()
