"""uvicorn's server, saying where it listens only once its port accepts connections, and when the models
are loaded."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import uvicorn

from app.server.loading import ModelLoading


class AnnouncingServer(uvicorn.Server):
    """Says `banner` once listening, then one line when the models' loading ends (ready, or why not)."""

    def __init__(
        self, config: uvicorn.Config, banner: str, loading: ModelLoading, say: Callable[[str], object]
    ) -> None:
        super().__init__(config)
        self.banner, self.loading, self.say = banner, loading, say

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then say the addresses; return nothing."""
        await super().startup(sockets)
        if self.started:  # else uvicorn has logged why it could not listen, and exits
            self.say(self.banner)
            threading.Thread(target=self._say_when_loaded, name="kbqa-ready-line", daemon=True).start()

    def _say_when_loaded(self) -> None:
        self.loading.finished.wait()
        if self.loading.error:
            self.say(f"kbqa: loading the models failed: {self.loading.error} (the log above says more)")
        elif not self.should_exit:
            self.say(f"kbqa: ready, the models loaded in {self.loading.seconds:.0f} s")
