"""`python -m pix2video.cli`: the same as the `pix2video` command."""

from . import main

main()
