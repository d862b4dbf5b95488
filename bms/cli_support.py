"""What every ``bms`` sub-command shares: the ``--config`` option, loading settings, and
running one piece of work on the PostgreSQL the settings point at."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from bms.settings import Settings, SettingsError

__all__ = ["ConfigOpt", "load_settings", "on_postgres"]

T = TypeVar("T")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML settings file")]  # noqa: UP045


def load_settings(config: Path | None) -> Settings:
    """The settings (file, then environment); exit 2 with the reason when they are invalid."""
    try:
        return Settings.load(config)
    except SettingsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def on_postgres(
    settings: Settings,
    application_name: str,
    fn: Callable[[Any], Awaitable[T]],
    *,
    refused: tuple[type[Exception], ...] = (KeyError, ValueError),
) -> T:
    """Run ``fn(connection)`` on BMS_POSTGRES_URL (or the embedded server), migrated first.

    An exception of a ``refused`` type is the user's mistake (an unknown id, a bad value):
    its message is printed and the command exits 1.
    """
    from bms.services import EmbeddedServices
    from bms.system import run_migrations
    from store import open_postgres

    async def main(url: str) -> T:
        await run_migrations(url)
        async with open_postgres(url, application_name=application_name) as conn:
            return await fn(conn)

    with EmbeddedServices(settings) as services:
        try:
            return asyncio.run(main(services.urls.postgres_url))
        except refused as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from None
