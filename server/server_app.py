"""The ServerApp: a federation with the unlearning strategy, configured by the run config."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedforget.config import FederationConfig
from fedforget.federated.federation import run_federation
from fedforget.grid import PromptGrid


def build_server_app(config: FederationConfig | None = None) -> ServerApp:
    """A ServerApp running :func:`fedforget.federated.federation.run_federation`.

    With ``config`` None, the config is read from the run config (``flwr run``
    with ``[tool.flwr.app.config]`` and ``--run-config``); otherwise ``config``
    is used as given (``fedforget run``, whose simulation passes no run config).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # replies are collected every 0.2 s, not every 3 s (fedforget.grid)
        run_federation(
            PromptGrid(grid), config or FederationConfig.from_run_config(context.run_config)
        )

    return app


app = build_server_app()
