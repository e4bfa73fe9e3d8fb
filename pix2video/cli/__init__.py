"""The `pix2video` command line: one small module per command, on the library.

    pix2video edit INPUT -p "edit prompt" -o OUTPUT [options]   (edit.py -> job.edit_clip)
    pix2video eval EDITED --source INPUT -p "prompt"            (evaluate.py -> metrics)
    pix2video ablate INPUT -p "prompt" -o FOLDER                (ablate.py -> ablation)
    pix2video ui [--port N]                                     (ui.py -> pix2video.ui)
    pix2video batch JOBS -o FOLDER [--backend ray]              (batch.py -> pix2video.batch)
    pix2video download [--all | --model ID ...]                 (download.py -> hub)
    pix2video doctor                                            (doctor.py -> environment)

Each command parses its options, calls the library and prints; what they share has a
module each: `errors.py` (one sentence and exit code 2 for anything a user can fix, 130
on Ctrl-C), `progress.py` (progress bars), `config_file.py` (``--config`` files),
`options.py` (option groups) and `memory.py` (the allocator's tuning). Heavy libraries
(torch, diffusers, gradio) are imported only when a command runs, so ``--help`` is
instant. A new command is a module with a click command, added to `main` below.
"""

from __future__ import annotations

import click

from .. import __version__
from . import ablate, batch, doctor, download, edit, evaluate, ui
from .errors import Pix2VideoGroup
from .memory import use_one_malloc_arena


@click.group(
    cls=Pix2VideoGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="pix2video")
def main() -> None:
    """Pix2Video: text-guided video editing with depth-conditioned Stable Diffusion 2.

    Example: pix2video edit clip.mp4 -p "a swarovski crystal swan" -o edited.mp4
    """
    use_one_malloc_arena()


main.add_command(edit.edit)
main.add_command(evaluate.evaluate_command)
main.add_command(ablate.ablate)
main.add_command(ui.ui)
main.add_command(batch.batch)
main.add_command(download.download)
main.add_command(doctor.doctor)

__all__ = ["main"]
