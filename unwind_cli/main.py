"""``unwind``: the on-call's command line over Unwind's public API (docs/cli.md).

Exit codes: 0 done (for ``watch``: the rollback succeeded); 1 the API refused (its message
names the field at fault), or the watched rollback ended otherwise, or an export did not
verify; 2 a usage error; 3 no answer from the server, or no token; 4 ``watch --timeout``
ran out first.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from unwind_cli import client as api
from unwind_cli import render
from unwind_cli.client import ApiError, Client, ConfigError, Unreachable

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 3, 4

app = typer.Typer(
    name="unwind",
    help="Plan, approve, run and watch cross-system rollbacks from a terminal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
estate_app = typer.Typer(help="The estate as code: export it, or import a document.")
ledger_app = typer.Typer(help="The ledger: export it to a file and verify it.")
app.add_typer(estate_app, name="estate")
app.add_typer(ledger_app, name="ledger")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass
class Options:
    url: str | None
    config: str | None
    as_json: bool
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(*api.resolve(self.url, self.config))
        return self._client


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="Unwind's address (else UNWIND_URL, the config file, or localhost)."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="The config file (else UNWIND_CONFIG or ~/.config/unwind/config.toml)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON answers, for scripts.")
    ] = False,
) -> None:
    ctx.obj = Options(url=url, config=config, as_json=as_json)


def _opts(ctx: typer.Context) -> Options:
    return ctx.find_root().obj


def _fail(message: str, code: int) -> typer.Exit:
    # soft_wrap: a path or URL in the message stays whole, to be copied.
    err.print(Text(message, style="bold red"), soft_wrap=True)
    return typer.Exit(code)


def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> Any:
    """The API's answer; an error is printed with the fields it names, and exits."""
    opts = _opts(ctx)
    try:
        client = opts.client
        return client.call(method, path, **kwargs)
    except ConfigError as exc:
        raise _fail(f"error: {exc}", EXIT_UNREACHABLE) from None
    except Unreachable as exc:
        raise _fail(f"error: no answer from {exc}", EXIT_UNREACHABLE) from None
    except ApiError as exc:
        _print_api_error(opts, exc)
        raise typer.Exit(EXIT_REFUSED) from None


def _print_api_error(opts: Options, exc: ApiError) -> None:
    if opts.as_json:
        body = {"status": exc.status, "detail": exc.detail, "errors": exc.errors}
        err.print_json(json.dumps(body))
        return
    # The detail is often only the fields' messages joined: then the fields say it alone.
    said = {f"{name}: {m}" for name, messages in exc.errors.items() for m in messages}
    said |= {m for messages in exc.errors.values() for m in messages}
    repeats = exc.errors and set(exc.detail.split("; ")) <= said
    heading = f"error {exc.status}" + ("" if repeats else f": {exc.detail}")
    err.print(Text(heading, style="bold red"), soft_wrap=True)
    for name, messages in exc.errors.items():
        for message in messages:
            err.print(Text.assemble("  ", (name, "bold"), f": {message}"), soft_wrap=True)


def _emit(ctx: typer.Context, data: Any, view: Any = None) -> None:
    if _opts(ctx).as_json or view is None:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(view)


# Runs and rollbacks --------------------------------------------------------------------------


@app.command()
def runs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="running, failed or succeeded")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """List the process runs you can see, newest first, with their newest rollback."""
    data = _call(
        ctx,
        "GET",
        "/runs",
        params={"status": status, "limit": limit} if status else {"limit": limit},
    )
    _emit(ctx, data, render.runs_table(data))


@app.command()
def plan(
    ctx: typer.Context,
    run: Annotated[int, typer.Argument(help="The run's id (see `unwind runs`).")],
    reason: Annotated[str, typer.Option(help="Why: the ledger keeps it.")],
    drill: Annotated[bool, typer.Option(help="A rehearsal against drill targets.")] = False,
) -> None:
    """Plan the rollback of a failed run and submit it to the approval policies."""
    data = _call(ctx, "POST", "/rollbacks", json={"run": run, "reason": reason, "drill": drill})
    _emit(ctx, data, render.rollback_view(data))
    if not _opts(ctx).as_json:
        if data["awaits_approval"]:
            out.print(
                f"Awaits approval: an approver runs `unwind approve {data['id']} --comment …`."
            )
        else:
            out.print(f"Approved by policy: `unwind start {data['id']}`.")


@app.command()
def show(
    ctx: typer.Context, rollback: Annotated[int, typer.Argument(help="The rollback's id.")]
) -> None:
    """A rollback: its state, stages and steps with their attempts."""
    data = _call(ctx, "GET", f"/rollbacks/{rollback}")
    _emit(ctx, data, render.rollback_view(data))


def _act(ctx: typer.Context, rollback: int, action: str, body: dict) -> None:
    data = _call(ctx, "POST", f"/rollbacks/{rollback}/{action}", json=body)
    _emit(ctx, data, render.rollback_view(data))


ROLLBACK_ID = Annotated[int, typer.Argument(help="The rollback's id.")]
STEP_ID = Annotated[int, typer.Argument(help="The step's id (see `unwind show`).")]


@app.command()
def approve(
    ctx: typer.Context,
    rollback: ROLLBACK_ID,
    comment: Annotated[str, typer.Option(help="What you checked.")],
    attest: Annotated[
        list[str] | None,
        typer.Option(help="KEY=TEXT, one per attestation the policy requires (repeat it)."),
    ] = None,
) -> None:
    """Approve a rollback that awaits approval (never your own: four-eyes)."""
    attestations = {}
    for item in attest or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise typer.BadParameter("use KEY=TEXT", param_hint="--attest")
        attestations[key] = text
    _act(ctx, rollback, "approve", {"comment": comment, "attestations": attestations})


@app.command()
def reject(
    ctx: typer.Context,
    rollback: ROLLBACK_ID,
    comment: Annotated[str, typer.Option(help="Why not.")],
) -> None:
    """Reject a rollback that awaits approval: it ends aborted."""
    _act(ctx, rollback, "reject", {"comment": comment})


@app.command()
def start(ctx: typer.Context, rollback: ROLLBACK_ID) -> None:
    """Start an approved rollback."""
    _act(ctx, rollback, "start", {})


@app.command()
def pause(
    ctx: typer.Context, rollback: ROLLBACK_ID, reason: Annotated[str, typer.Option()] = ""
) -> None:
    """Pause a running rollback: steps under way finish, no new one starts."""
    _act(ctx, rollback, "pause", {"reason": reason})


@app.command()
def resume(ctx: typer.Context, rollback: ROLLBACK_ID) -> None:
    """Resume a paused rollback."""
    _act(ctx, rollback, "resume", {})


@app.command()
def abort(
    ctx: typer.Context, rollback: ROLLBACK_ID, reason: Annotated[str, typer.Option()]
) -> None:
    """Abort a rollback: what is undone stays undone, the rest is not attempted."""
    _act(ctx, rollback, "abort", {"reason": reason})


def _step(ctx: typer.Context, step: int, action: str, body: dict) -> None:
    data = _call(ctx, "POST", f"/steps/{step}/{action}", json=body)
    _emit(ctx, data, render.rollback_view(data))


@app.command()
def retry(ctx: typer.Context, step: STEP_ID) -> None:
    """Retry a failed step with a fresh budget of attempts."""
    _step(ctx, step, "retry", {})


@app.command()
def skip(ctx: typer.Context, step: STEP_ID, reason: Annotated[str, typer.Option()]) -> None:
    """Skip a step: its effect stays undone, the rollback ends partially rolled back."""
    _step(ctx, step, "skip", {"reason": reason})


@app.command()
def resolve(
    ctx: typer.Context,
    step: STEP_ID,
    note: Annotated[str, typer.Option(help="What was done by hand.")],
) -> None:
    """Resolve a manual step that was done by hand."""
    _step(ctx, step, "resolve", {"note": note})


# Watching ------------------------------------------------------------------------------------


@app.command()
def watch(
    ctx: typer.Context,
    rollback: ROLLBACK_ID,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(help="Give up (exit 4) after this many seconds.")
    ] = None,
) -> None:
    """Follow a rollback until it ends, by stage and step; exit 0 only if it succeeded.

    In a terminal it redraws the plan in place; otherwise (a pipe, a CI log) it prints one
    line per change. A lost connection is retried until --timeout.
    """
    opts = _opts(ctx)
    deadline = time.monotonic() + timeout if timeout else None
    live = out.is_terminal and not opts.as_json
    seen: dict[str, str] = {}
    hinted: set[int] = set()
    lost = False
    data: dict | None = None
    display = Live(console=out, auto_refresh=False) if live else None
    if display:
        display.start()
    try:
        while True:
            try:
                data = opts.client.get(f"/rollbacks/{rollback}")
                if lost:
                    err.print("connection back")
                lost = False
            except ApiError as exc:
                _print_api_error(opts, exc)
                raise typer.Exit(EXIT_REFUSED) from None
            except ConfigError as exc:
                raise _fail(f"error: {exc}", EXIT_UNREACHABLE) from None
            except Unreachable as exc:
                if not lost:
                    err.print(Text(f"connection lost, retrying: {exc}", style="yellow"))
                lost = True
            if data is not None and not lost:
                if display:
                    display.update(render.rollback_view(data), refresh=True)
                elif not opts.as_json:
                    _print_changes(data, seen, hinted)
                if data["state"] in render.TERMINAL:
                    break
            if deadline and time.monotonic() > deadline:
                state = data["state"] if data else "unknown"
                raise _fail(f"timed out after {timeout:g} s; the rollback is {state}", EXIT_TIMEOUT)
            time.sleep(interval)
    finally:
        if display:
            display.stop()
    if opts.as_json:
        out.print_json(json.dumps(data, default=str))
    else:
        style = "bold green" if data["state"] == "succeeded" else "bold red"
        summary = data.get("outcome_summary") or ""
        out.print(
            Text(f"rollback #{rollback} {data['state'].replace('_', ' ')}. {summary}", style=style)
        )
    raise typer.Exit(0 if data["state"] == "succeeded" else EXIT_REFUSED)


def _print_changes(data: dict, seen: dict[str, str], hinted: set[int]) -> None:
    now = time.strftime("%H:%M:%S")
    snapshot = render.snapshot(data)
    for line in render.changes(seen, snapshot):
        out.print(f"{now} {line}", soft_wrap=True)
    seen.clear()
    seen.update(snapshot)
    for stage in data["stages"]:
        for step in stage["steps"]:
            if step["state"] in render.NEEDS_HUMAN and step["id"] not in hinted:
                hinted.add(step["id"])
                out.print(
                    Text(
                        f"{now} step {step['id']} waits for a human: {render.human_hint(step)}",
                        style="bold magenta",
                    ),
                    soft_wrap=True,
                )
            elif step["state"] not in render.NEEDS_HUMAN:
                hinted.discard(step["id"])


# The estate ----------------------------------------------------------------------------------


@estate_app.command("export")
def estate_export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here.")] = None,
) -> None:
    """The estate document (YAML; JSON with --json), to stdout or a file. Admin role."""
    import yaml

    data = _call(ctx, "GET", "/estate")
    text = (
        json.dumps(data, indent=2) + "\n"
        if _opts(ctx).as_json
        else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    )
    if output:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@estate_app.command("import")
def estate_import(
    ctx: typer.Context,
    document: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="YAML or JSON.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the diff and the errors; change nothing.")
    ] = False,
) -> None:
    """Import an estate document, all or nothing; --dry-run shows what it would change."""
    body = document.read_bytes()
    content_type = "application/json" if document.suffix == ".json" else "application/yaml"
    opts = _opts(ctx)
    try:
        data = opts.client.call(
            "PUT",
            "/estate",
            params={"dry_run": "1"} if dry_run else {},
            content=body,
            headers={"Content-Type": content_type},
        )
    except ApiError as exc:
        _print_api_error(opts, exc)
        raise typer.Exit(EXIT_REFUSED) from None
    except (ConfigError, Unreachable) as exc:
        raise _fail(f"error: {exc}", EXIT_UNREACHABLE) from None
    if opts.as_json:
        out.print_json(json.dumps(data))
        return
    styles = {"+": "green", "~": "yellow", "-": "red"}
    for change in data["changes"]:
        out.print(Text(change, style=styles.get(change[:1], "")))
    if not data["changes"]:
        out.print("no change: the estate already is this document")
    verb = "would change" if dry_run else ("applied" if data["applied"] else "changed nothing")
    out.print(f"{verb}: {len(data['changes'])} change(s), document sha256 {data['sha256']}")


# The ledger ----------------------------------------------------------------------------------


@ledger_app.command("export")
def ledger_export(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="The export file.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    rollback: Annotated[int | None, typer.Option(help="Only this rollback's entries.")] = None,
    system: Annotated[str | None, typer.Option(help="Only entries about this system.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (and below it).")] = None,
    since: Annotated[str | None, typer.Option("--from", help="ISO 8601 time.")] = None,
    until: Annotated[str | None, typer.Option("--to", help="ISO 8601 time.")] = None,
    public_key: Annotated[
        str | None, typer.Option(help="The Ed25519 public key you trust (base64).")
    ] = None,
) -> None:
    """Stream the ledger to a file, fetch its signed manifest beside it, and verify both."""
    from ledger.verify_export import ExportInvalid, verify_export

    opts = _opts(ctx)
    params = {"format": fmt, "rollback": rollback, "system": system, "action": action}
    params |= {"from": since, "to": until}
    params = {k: v for k, v in params.items() if v is not None}
    manifest_path = output.with_name(output.name + ".manifest.json")
    partial = output.with_name(output.name + ".part")
    try:
        client = opts.client
        with client.stream("/api/v1/ledger/export", params) as response:
            size = 0
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    size += len(chunk)
            link = response.headers.get("Link", "")
        partial.replace(output)
        manifest_url = urljoin(client.base_url + "/", link.split(";")[0].strip(" <>"))
        document = client.http.get(manifest_url)
        if document.status_code >= 400:
            raise ApiError(document.status_code, document.text[:200])
        manifest_path.write_bytes(document.content)
    except ApiError as exc:
        partial.unlink(missing_ok=True)
        _print_api_error(opts, exc)
        raise typer.Exit(EXIT_REFUSED) from None
    except (ConfigError, Unreachable) as exc:
        partial.unlink(missing_ok=True)
        raise _fail(f"error: {exc}", EXIT_UNREACHABLE) from None
    err.print(f"wrote {output} ({size} bytes) and {manifest_path}")
    try:
        message = verify_export(output, json.loads(manifest_path.read_text()), public_key)
    except (ExportInvalid, ValueError) as exc:
        raise _fail(f"FAILED: {exc}", EXIT_REFUSED) from None
    out.print(Text(message, style="green"))


def main() -> None:
    app()
