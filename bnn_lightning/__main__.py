"""``python -m bnn_lightning ...`` runs the CLI."""

from bnn_lightning.cli import main

if __name__ == "__main__":
    main()
