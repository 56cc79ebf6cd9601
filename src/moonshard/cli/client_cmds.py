"""The client commands over the HTTP API: ``template``, ``dispatch``, ``kv``, ``logs``,
``token``, ``tenant``.

Each prints a readable table (or text) and, with ``--json``, the API's JSON answer. Errors
are one line on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import urllib.parse
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click
from rich.text import Text

from moonshard.cli.exec_cmd import read_template_dir
from moonshard.cli.output import Printer
from moonshard.cli.remote import client_options, open_remote, print_json
from moonshard.cli.template_init_cmd import template_init
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["client_commands"]

_LEVEL_STYLES = MappingProxyType(
    {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "bold red"})


def _tenant(text: str) -> str:
    try:
        return str(TenantId.parse(text))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--tenant") from None


def _tenant_option(command: Any) -> Any:
    return click.option("--tenant", "tenant_text", required=True,
                        help="The tenant: guild:<id> or user:<id>.")(command)


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _when(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def _compact(value: object, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[:width - 1] + "…"


def _whole_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _parse_json_argument(text: str, what: str, *, fallback_to_string: bool) -> JsonValue:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise click.BadParameter(f"cannot read {text[1:]}: {error.strerror}",
                                     param_hint=what) from None
    try:
        value: JsonValue = json.loads(text)
    except json.JSONDecodeError as error:
        if fallback_to_string:
            return text
        raise click.BadParameter(f"not valid JSON: {error}", param_hint=what) from None
    return value


# -- template --------------------------------------------------------------------------------
@click.group("template")
def template() -> None:
    """Manage a tenant's templates on a running server, or start a new one (init)."""


template.add_command(template_init)


@template.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_tenant_option
@click.option("--name", help="The template's name (default: the folder's name).")
@click.option("--paused", is_flag=True, help="Save it paused: it receives no events.")
@client_options
def template_push(directory: Path, tenant_text: str, name: str | None, paused: bool,
                  url: str | None, token: str | None, as_json: bool) -> None:
    """Compile and save the template in DIRECTORY (every .lua file below it)."""
    tenant = _tenant(tenant_text)
    files = read_template_dir(directory)
    if not files:
        raise click.BadParameter(f"{directory} holds no .lua file", param_hint="DIRECTORY")
    name = name or directory.resolve().name
    remote = open_remote(url, token)
    saved = remote.call("PUT", f"/v1/tenants/{_segment(tenant)}/templates/{_segment(name)}",
                        body={"files": files, "paused": paused}).json()
    if as_json:
        print_json(saved)
        return
    events = ", ".join(saved["events"]) or "no events"
    click.echo(f"pushed {saved['name']} (version {saved['version']}) to {tenant}: handles "
               f"{events}")


@template.command("ls")
@_tenant_option
@client_options
def template_ls(tenant_text: str, url: str | None, token: str | None, as_json: bool) -> None:
    """List the tenant's templates."""
    tenant = _tenant(tenant_text)
    templates = open_remote(url, token).call(
        "GET", f"/v1/tenants/{_segment(tenant)}/templates").json()
    if as_json:
        print_json(templates)
        return
    if not templates:
        click.echo(f"{tenant} has no templates")
        return
    Printer().table(
        f"templates of {tenant}", ("name", "version", "events", "paused", "updated"),
        [(item["name"], str(item["version"]), ", ".join(item["events"]),
          "yes" if item["paused"] else "", _when(item["updated_at"])) for item in templates])


@template.command("show")
@click.argument("name")
@_tenant_option
@client_options
def template_show(name: str, tenant_text: str, url: str | None, token: str | None,
                  as_json: bool) -> None:
    """Print a template's files and subscriptions."""
    tenant = _tenant(tenant_text)
    shown = open_remote(url, token).call(
        "GET", f"/v1/tenants/{_segment(tenant)}/templates/{_segment(name)}").json()
    if as_json:
        print_json(shown)
        return
    printer = Printer()
    printer.line(Text(f"{shown['name']} (version {shown['version']})", style="bold"),
                 f" handles {', '.join(shown['events']) or 'nothing'}"
                 f"{' (paused)' if shown['paused'] else ''}")
    for path, source in sorted(shown["files"].items()):
        printer.line("")
        printer.line(Text(f"-- {path}", style="bold cyan"))
        # The source exactly as stored, whatever the width of the terminal or the pipe.
        printer.line(Text(source.rstrip("\n")))


@template.command("rm")
@click.argument("name")
@_tenant_option
@client_options
def template_rm(name: str, tenant_text: str, url: str | None, token: str | None,
                as_json: bool) -> None:
    """Remove a template; later events no longer reach it."""
    tenant = _tenant(tenant_text)
    open_remote(url, token).call(
        "DELETE", f"/v1/tenants/{_segment(tenant)}/templates/{_segment(name)}")
    if as_json:
        print_json({"removed": name, "tenant": tenant})
    else:
        click.echo(f"removed {name} from {tenant}")


@template.command("history")
@click.argument("name")
@_tenant_option
@client_options
def template_history(name: str, tenant_text: str, url: str | None, token: str | None,
                     as_json: bool) -> None:
    """List a template's kept versions (the last 10 saves), newest first."""
    tenant = _tenant(tenant_text)
    versions = open_remote(url, token).call(
        "GET", f"/v1/tenants/{_segment(tenant)}/templates/{_segment(name)}/versions").json()
    if as_json:
        print_json(versions)
        return
    Printer().table(
        f"versions of {name} on {tenant}", ("version", "saved", "events", "current"),
        [(str(item["version"]), _when(item["updated_at"]), ", ".join(item["events"]),
          "yes" if number == 0 else "") for number, item in enumerate(versions)])


@template.command("rollback")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1), required=False)
@_tenant_option
@client_options
def template_rollback(name: str, version: int | None, tenant_text: str, url: str | None,
                      token: str | None, as_json: bool) -> None:
    """Make an earlier kept VERSION of a template current again (default: the previous one).

    The old files are saved as a new version, validated and swapped in like a push.
    """
    tenant = _tenant(tenant_text)
    body: dict[str, int] = {} if version is None else {"version": version}
    saved = open_remote(url, token).call(
        "POST", f"/v1/tenants/{_segment(tenant)}/templates/{_segment(name)}/rollback",
        body=body).json()
    if as_json:
        print_json(saved)
        return
    events = ", ".join(saved["events"]) or "no events"
    source = "the previous version" if version is None else f"version {version}"
    click.echo(f"rolled {saved['name']} back to {source} on {tenant}: now version "
               f"{saved['version']}, handles {events}")


# -- dispatch --------------------------------------------------------------------------------
@click.command("dispatch")
@click.argument("event_name", metavar="NAME")
@_tenant_option
@click.option("--data", "data_text", help="Event data as JSON, or @file to read it from a file.")
@click.option("--author", help="The user snowflake the event is from.")
@click.option("--no-wait", is_flag=True, help="Queue it and print its id; do not wait.")
@client_options
def dispatch(event_name: str, tenant_text: str, data_text: str | None, author: str | None,
             no_wait: bool, url: str | None, token: str | None, as_json: bool) -> None:
    """Send an event to a tenant and print its handlers' results.

    Exit status: 0 when every handler succeeded, 1 when one failed.
    """
    tenant = _tenant(tenant_text)
    data = {} if data_text is None else _parse_json_argument(data_text, "--data",
                                                             fallback_to_string=False)
    body = {"name": event_name, "data": data, "author": author}
    answer = open_remote(url, token).call(
        "POST", f"/v1/tenants/{_segment(tenant)}/events", body=body,
        params={"wait": not no_wait}).json()
    if as_json:
        print_json(answer)
    elif no_wait:
        click.echo(f"queued {event_name} for {tenant}: event {answer['event_id']}")
    else:
        _print_results(tenant, event_name, answer)
    if not no_wait and not all(result.get("ok") for result in answer["results"]):
        sys.exit(1)


def _print_results(tenant: str, event_name: str, answer: dict[str, Any]) -> None:
    results = answer["results"]
    if not results:
        click.echo(f"no template of {tenant} handles {event_name} (event {answer['event_id']})")
        return
    printer = Printer()
    for result in results:
        if result["ok"]:
            printer.line(Text(f"{result['template']}: ok", style="green"), " ",
                         json.dumps(result.get("value"), ensure_ascii=False))
        else:
            printer.line(Text(f"{result['template']}: failed", style="bold red"), " ",
                         str(result.get("error")))


# -- kv --------------------------------------------------------------------------------------
@click.group("kv")
def kv() -> None:
    """Read and change a tenant's key-value store on a running server."""


def _scope_option(command: Any) -> Any:
    return click.option("--scope", default="default", show_default=True,
                        help="The key scope.")(command)


def _key_path(tenant: str, scope: str, key: str) -> str:
    return f"/v1/tenants/{_segment(tenant)}/kv/{_segment(scope)}/{_segment(key)}"


@kv.command("ls")
@_tenant_option
@_scope_option
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--limit", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--after", help="Start after this key (the 'next' of a previous page).")
@client_options
def kv_ls(tenant_text: str, scope: str, prefix: str, limit: int, after: str | None,
          url: str | None, token: str | None, as_json: bool) -> None:
    """List keys, by key."""
    tenant = _tenant(tenant_text)
    params: dict[str, str | int | bool] = {"scope": scope, "prefix": prefix, "limit": limit}
    if after is not None:
        params["after"] = after
    page = open_remote(url, token).call(
        "GET", f"/v1/tenants/{_segment(tenant)}/kv", params=params).json()
    if as_json:
        print_json(page)
        return
    if not page["items"]:
        click.echo(f"no keys in scope {scope} of {tenant}" +
                   (f" starting with {prefix!r}" if prefix else ""))
        return
    printer = Printer()
    # On a terminal long values are shortened to keep the table readable; piped, whole.
    shown = _compact if printer.terminal else _whole_json
    printer.table(f"{tenant} scope {scope}", ("key", "value", "version", "updated", "expires"),
                  [(record["key"], shown(record["value"]), str(record["version"]),
                    _when(record["updated_at"]), _when(record["expires_at"]))
                   for record in page["items"]])
    if page["next"] is not None:
        click.echo(f"more: --after {json.dumps(page['next'], ensure_ascii=False)}", err=True)


@kv.command("get")
@click.argument("key")
@_tenant_option
@_scope_option
@client_options
def kv_get(key: str, tenant_text: str, scope: str, url: str | None, token: str | None,
           as_json: bool) -> None:
    """Print a key's value (with --json, its whole record)."""
    tenant = _tenant(tenant_text)
    record = open_remote(url, token).call("GET", _key_path(tenant, scope, key)).json()
    print_json(record if as_json else record["value"])


@kv.command("set")
@click.argument("key")
@click.argument("value")
@_tenant_option
@_scope_option
@click.option("--ttl", type=float, help="Seconds until the key expires.")
@click.option("--expires-at", type=float, help="Unix seconds when the key expires.")
@click.option("--resume", is_flag=True, help="Mark it a resume key (KeyResume on VM rebuild).")
@client_options
def kv_set(key: str, value: str, tenant_text: str, scope: str, ttl: float | None,
           expires_at: float | None, resume: bool, url: str | None, token: str | None,
           as_json: bool) -> None:
    """Set KEY to VALUE: JSON (or @file), else taken as a string."""
    tenant = _tenant(tenant_text)
    body: dict[str, JsonValue] = {
        "value": _parse_json_argument(value, "VALUE", fallback_to_string=True)}
    if ttl is not None:
        body["ttl"] = ttl
    if expires_at is not None:
        body["expires_at"] = expires_at
    if resume:
        body["resume"] = True
    record = open_remote(url, token).call("PUT", _key_path(tenant, scope, key),
                                          body=body).json()
    if as_json:
        print_json(record)
    else:
        click.echo(f"set {key} in scope {scope} of {tenant} (version {record['version']})")


@kv.command("rm")
@click.argument("key")
@_tenant_option
@_scope_option
@client_options
def kv_rm(key: str, tenant_text: str, scope: str, url: str | None, token: str | None,
          as_json: bool) -> None:
    """Delete a key (and cancel its expiry)."""
    tenant = _tenant(tenant_text)
    open_remote(url, token).call("DELETE", _key_path(tenant, scope, key))
    if as_json:
        print_json({"deleted": key, "scope": scope, "tenant": tenant})
    else:
        click.echo(f"deleted {key} from scope {scope} of {tenant}")


# -- logs ------------------------------------------------------------------------------------
_SINCE_UNITS = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86_400})


def _since(text: str | None) -> float | None:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``7d``), unix seconds,
    or an ISO 8601 time (local time when it has no offset)."""
    if text is None:
        return None
    value = text.strip()
    try:
        if value[-1:] in _SINCE_UNITS and value[:-1]:
            return time.time() - float(value[:-1]) * _SINCE_UNITS[value[-1]]
        if value.replace(".", "", 1).isdigit():
            return float(value)
        return datetime.datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError):
        raise click.BadParameter(
            "use a duration (90s, 10m, 2h, 7d), unix seconds or an ISO 8601 time",
            param_hint="--since") from None


@click.command("logs")
@_tenant_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they come.")
@click.option("--limit", type=click.IntRange(0, 1000), default=100, show_default=True,
              help="How many recent lines first.")
@click.option("--level", type=click.Choice(["debug", "info", "warn", "error"]),
              help="Only lines at this level or more severe.")
@click.option("--template", "template_name", help="Only lines of this template.")
@click.option("--since", "since_text",
              help="Only lines since then: 10m, 2h, 7d, unix seconds or an ISO 8601 time.")
@client_options
def logs(tenant_text: str, follow: bool, limit: int, level: str | None,
         template_name: str | None, since_text: str | None, url: str | None,
         token: str | None, as_json: bool) -> None:
    """Print (and with --follow, follow) a tenant's log."""
    tenant = _tenant(tenant_text)
    since = _since(since_text)
    remote = open_remote(url, token)
    printer = Printer()
    params: dict[str, str | int | bool] = {"follow": follow, "limit": limit}
    if level is not None:
        params["level"] = level
    if template_name is not None:
        params["template"] = template_name
    if since is not None:
        params["since"] = repr(since)
    try:
        for raw in remote.lines(f"/v1/tenants/{_segment(tenant)}/logs", params):
            if not raw.strip():
                continue
            if as_json:
                click.echo(raw)
                continue
            printer.line(_log_text(json.loads(raw)))
    except KeyboardInterrupt:
        sys.exit(130)


def _log_text(line: dict[str, Any]) -> Text:
    text = Text()
    stamp = datetime.datetime.fromtimestamp(float(line["ts"])).isoformat(
        sep=" ", timespec="milliseconds")
    text.append(f"{stamp} ", style="dim")
    level = str(line["level"])
    text.append(f"[{level}] ", style=_LEVEL_STYLES.get(level, ""))
    text.append(f"{line['template']}: ", style="bold")
    text.append(str(line["message"]))
    return text


# -- token -----------------------------------------------------------------------------------
@click.group("token")
def token_group() -> None:
    """Manage API tokens (needs the admin token)."""


@token_group.command("create")
@_tenant_option
@click.option("--label", help="What the token is for (shown by 'token ls').")
@client_options
def token_create(tenant_text: str, label: str | None, url: str | None, token: str | None,
                 as_json: bool) -> None:
    """Print a new token that reaches TENANT only. It is shown once: keep it."""
    tenant = _tenant(tenant_text)
    body: dict[str, JsonValue] = {"tenant": tenant}
    if label is not None:
        body["label"] = label
    created = open_remote(url, token).call("POST", "/v1/tokens", body=body).json()
    if as_json:
        print_json(created)
    else:
        click.echo(created["token"])
        click.echo(f"token {created['id']} reaches {tenant} only; it is shown this once",
                   err=True)


@token_group.command("ls")
@client_options
def token_ls(url: str | None, token: str | None, as_json: bool) -> None:
    """List tokens: ids, tenants, labels, creation and last use (never the secret)."""
    tokens = open_remote(url, token).call("GET", "/v1/tokens").json()
    if as_json:
        print_json(tokens)
        return
    Printer().table("tokens", ("id", "tenant", "label", "created", "last used"), [
        (item["id"], item["tenant"] or "(admin: every tenant)", item["label"] or "",
         _when(item["created_at"]), _when(item["last_used_at"]) or "never")
        for item in tokens])


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@client_options
def token_revoke(token_id: str, url: str | None, token: str | None, as_json: bool) -> None:
    """End the token ID (see 'token ls') at once."""
    open_remote(url, token).call("DELETE", f"/v1/tokens/{_segment(token_id)}")
    if as_json:
        print_json({"revoked": token_id})
    else:
        click.echo(f"revoked {token_id}")


@token_group.command("rotate-admin")
@client_options
def token_rotate_admin(url: str | None, token: str | None, as_json: bool) -> None:
    """Replace the admin token: the old one stops working at once. The server writes the
    new one to its admin token file; it is printed too."""
    rotated = open_remote(url, token).call("POST", "/v1/tokens/rotate-admin").json()
    if as_json:
        print_json(rotated)
        return
    click.echo(rotated["token"])
    where = f"written to {rotated['file']}" if rotated.get("file") else \
        "not written to any file: keep it"
    click.echo(f"new admin token {rotated['id']}, {where}; the old one no longer works",
               err=True)


# -- tenant ----------------------------------------------------------------------------------
@click.group("tenant")
def tenant_group() -> None:
    """See tenants and their status (ls needs the admin token)."""


def _memory(status: dict[str, Any]) -> str:
    vm = status.get("vm") or {}
    if vm.get("resident") is None:
        return "?"
    if not vm["resident"]:
        return "not resident"
    return f"{(vm.get('memory_bytes') or 0) / (1024 * 1024):.1f} MiB"


@tenant_group.command("ls")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True,
              help="Tenants per page.")
@click.option("--after", help="Start after this tenant (the 'next' of a previous page).")
@click.option("--all", "every", is_flag=True, help="Follow the pages to the end.")
@client_options
def tenant_ls(limit: int, after: str | None, every: bool, url: str | None, token: str | None,
              as_json: bool) -> None:
    """List tenants that have templates, with their status."""
    remote = open_remote(url, token)
    items: list[dict[str, Any]] = []
    following: str | None = after
    while True:
        params: dict[str, str | int | bool] = {"limit": limit}
        if following is not None:
            params["after"] = following
        page = remote.call("GET", "/v1/tenants", params=params).json()
        items.extend(page["items"])
        following = page["next"]
        if following is None or not every:
            break
    if as_json:
        print_json({"items": items, "next": following})
        return
    if not items:
        click.echo("no tenants")
        return
    Printer().table("tenants", ("tenant", "version", "templates", "worker", "vm", "errors"), [
        (item["tenant"], str(item["template_set_version"]), ", ".join(item["templates"]),
         str(item["vm"]["worker"]), _memory(item), str(len(item["recent_errors"])))
        for item in items])
    if following is not None:
        click.echo(f"more: --after {following}", err=True)


@tenant_group.command("show")
@click.argument("tenant_text", metavar="TENANT")
@client_options
def tenant_show(tenant_text: str, url: str | None, token: str | None, as_json: bool) -> None:
    """Show one tenant: templates, subscriptions, VM, worker, counters, recent errors."""
    tenant = _tenant(tenant_text)
    status = open_remote(url, token).call("GET", f"/v1/tenants/{_segment(tenant)}").json()
    if as_json:
        print_json(status)
        return
    printer = Printer()
    vm, worker, counters = status["vm"], status["worker"], status["counters"]
    printer.line(Text(status["tenant"], style="bold"),
                 f" (template set version {status['template_set_version']})")
    printer.line(f"templates: {', '.join(status['templates']) or 'none'}")
    printer.line(f"subscriptions: {', '.join(status['subscriptions']) or 'none'}")
    printer.line(f"worker: {worker['index']} ({'up' if worker['up'] else 'down'}, "
                 f"{worker['restarts']} restarts)")
    printer.line(f"vm: {_memory(status)}, loaded version {vm.get('loaded_version')}, "
                 f"{vm.get('queued') or 0} queued{', running' if vm.get('running') else ''}")
    if status["quarantined_until"] is not None:
        printer.line(Text(f"quarantined until {_when(status['quarantined_until'])}",
                          style="bold red"))
    printer.line("counters: " + ", ".join(f"{name} {value}"
                                          for name, value in counters.items()))
    printer.line(f"recent errors: {len(status['recent_errors'])}")
    for line in status["recent_errors"]:
        printer.line(_log_text(line))


def client_commands() -> list[click.Command]:
    return [template, dispatch, kv, logs, token_group, tenant_group]

