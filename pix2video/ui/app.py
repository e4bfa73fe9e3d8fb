"""`pix2video ui`'s page: a form -> `EditSettings` -> the job -> what it returned.

The layout is `layout.build_page`, the handlers `handlers.PageHandlers`, the form's reading
`form`, the words `texts`. Every choice list, default and bound comes from `settings.py`;
every rule about editing stays in `job/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import Pix2VideoError
from . import ServerOptions
from .handlers import PageHandlers
from .layout import build_page

CSS = "#status textarea { font-family: var(--font-mono); font-size: 0.85em; }"


class EditorApp(PageHandlers):
    """The page, its handlers and its server: what `serve` starts and stops."""

    def __init__(
        self, options: ServerOptions, folder: Path, log: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(options, folder, log)
        self.blocks = build_page(self)

    # ------------------------------------------------------------------ server
    def launch(self) -> tuple[str, str | None]:
        """Start serving (without blocking); returns (local URL, share URL or None)."""
        o = self.options
        self.blocks.queue(default_concurrency_limit=1)
        try:
            _, local_url, share_url = self.blocks.launch(
                server_name=o.host,
                server_port=o.port,
                share=o.share,
                max_file_size=f"{o.max_upload_mb}mb",
                allowed_paths=[str(p) for p in o.examples],
                prevent_thread_lock=True,
                quiet=True,
                show_error=False,
                ssr_mode=False,
                mcp_server=False,
                enable_monitoring=False,
                run_history=False,
                footer_links=["api"],
                css=CSS,
            )
        except OSError as exc:
            raise Pix2VideoError(
                f"Cannot start the server on {o.host}:{o.port} ({exc}); choose another --port."
            ) from exc
        return local_url, share_url

    def close(self) -> None:
        self.cancel_all()
        self.blocks.close(verbose=False)
