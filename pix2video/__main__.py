"""`python -m pix2video` = the `pix2video` command."""

from .cli import main

main()
