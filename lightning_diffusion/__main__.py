"""``python -m lightning_diffusion``: the ``lightning-diffusion`` command."""

from lightning_diffusion.commands import main

if __name__ == "__main__":
    main()
