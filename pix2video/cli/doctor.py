"""`pix2video doctor`: what a bug report needs (versions, devices, codecs, models, disk)."""

from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Print versions, working devices and dtypes, video codecs, cached models and free disk.

    Works offline (the hub is only probed, for a few seconds at most); paste its output
    into a bug report.
    """
    from ..environment import report
    from ..quiet import quiet_libraries

    with quiet_libraries():
        sections = report()
    for title, lines in sections.items():
        click.echo(f"{title}:")
        width = max((len(k) for k, _ in lines), default=0)
        for key, value in lines:
            click.echo(f"  {key:<{width}}  {value}")
