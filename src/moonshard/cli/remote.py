"""The CLI's side of the HTTP API: one ``Remote`` per command, errors as one line on stderr."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar

import click
import httpx

from moonshard.config import ClientSettings, ConfigError

__all__ = ["Remote", "RemoteError", "client_options", "describe_error", "open_remote", "print_json"]

_F = TypeVar("_F", bound=Callable[..., Any])


class RemoteError(click.ClickException):
    """A failed call: printed as ``error: <message>`` on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Remote:
    """Calls the server at ``settings.url`` with ``settings.token``."""

    def __init__(self, settings: ClientSettings, *, timeout: float = 120.0) -> None:
        self.settings = settings
        headers = {"User-Agent": "moonshard-cli"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._client = httpx.Client(base_url=settings.url, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, *, body: object = None,
             params: Mapping[str, str | int | bool] | None = None) -> httpx.Response:
        """Sends one request; raises ``RemoteError`` unless the answer is a success."""
        self._need_token()
        try:
            response = self._client.request(
                method, path, params=_query(params),
                content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"} if body is not None else None)
        except httpx.HTTPError as error:
            raise RemoteError(self._unreachable(error)) from None
        if response.is_error:
            raise RemoteError(describe_error(response))
        return response

    def lines(self, path: str, params: Mapping[str, str | int | bool]) -> Iterator[str]:
        """The lines of a streamed answer, as they come."""
        self._need_token()
        try:
            with self._client.stream("GET", path, params=_query(params),
                                     timeout=httpx.Timeout(None, connect=5.0)) as response:
                if response.is_error:
                    response.read()
                    raise RemoteError(describe_error(response))
                yield from response.iter_lines()
        except httpx.HTTPError as error:
            raise RemoteError(self._unreachable(error)) from None

    def _need_token(self) -> None:
        if not self.settings.token:
            raise RemoteError(
                f"{self.settings.token_source}: set MOONSHARD_TOKEN, or run this where "
                "'moonshard serve' keeps its data folder")

    def _unreachable(self, error: httpx.HTTPError) -> str:
        if isinstance(error, httpx.ConnectError):
            return (f"cannot reach the moonshard server at {self.settings.url}: is 'moonshard "
                    "serve' running? (MOONSHARD_URL names another server)")
        if isinstance(error, httpx.TimeoutException):
            return f"the server at {self.settings.url} did not answer in time"
        return f"talking to {self.settings.url} failed: {error}"


def _query(params: Mapping[str, str | int | bool] | None) -> dict[str, str | int] | None:
    if params is None:
        return None
    return {name: ("true" if value else "false") if isinstance(value, bool) else value
            for name, value in params.items()}


def describe_error(response: httpx.Response) -> str:
    """One line from an API error answer."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"the server answered {response.status_code}: {response.text[:200].strip()}"
    if code in ("compile_error", "load_error"):
        where = ":".join(str(part) for part in (error.get("file"), error.get("line")) if part)
        name = f"{error['template']} " if error.get("template") else ""
        if where and message.startswith(where + ":"):
            where = ""  # the message names its place already
        return f"template {name}refused: {where + ': ' if where else ''}{message}"
    retry = response.headers.get("Retry-After")
    hint = f" (retry in {retry} s)" if retry else ""
    return f"{message} [{response.status_code} {code}]{hint}"


def client_options(command: _F) -> _F:
    """``--url``, ``--token`` and ``--json``, shared by every client command."""
    for option in reversed((
        click.option("--url", envvar=None, help="The server (default: MOONSHARD_URL, else "
                     "http://127.0.0.1:8080)."),
        click.option("--token", envvar=None, help="The bearer token (default: MOONSHARD_TOKEN, "
                     "else the admin token file of the local data folder)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables."),
    )):
        command = option(command)
    return command


def open_remote(url: str | None, token: str | None) -> Remote:
    try:
        settings = ClientSettings.resolve(url, token, os.environ)
    except ConfigError as error:
        raise RemoteError(str(error)) from None
    return Remote(settings)


def print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))
