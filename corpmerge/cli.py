"""The `corpmerge` command line."""

from __future__ import annotations

import functools
import io
import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import typer
from rich.console import Console, Group
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and datasets' own bars; corpmerge shows its own

from corpmerge import __version__, progress
from corpmerge.errors import TRACEBACK_LOGGER, CorpmergeError, Terminated, counted, first_line, log_traceback
from corpmerge.rewards.sandbox import SandboxError, SandboxUnavailable

app = typer.Typer(
    name="corpmerge",
    help="Merge rewarded weight-space perturbations of a Hugging Face model into one deployable model (CoRP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RecipeArg = typer.Argument(..., exists=False, help="Path to a corpmerge YAML recipe.")
OutputOpt = typer.Option(None, "--output", "-o", help="Output folder (default: the recipe's output.path).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing output folder if corpmerge wrote it (atomically, once the new one is complete).")
RECORD_LOGGER = "corpmerge.record"  # what the terminal showed, for the log file only
GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose", "--version")
MAX_ERROR_CHARS = 1000


def _rich_reporter() -> progress.Reporter:
    """Progress bars on a terminal."""

    @contextmanager
    def reporter(description: str, total: int) -> Iterator[progress.Advance]:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        with Progress(*columns, console=err, transient=False) as bar:
            tid = bar.add_task(description, total=total, status="")

            def advance(steps: int = 1, *, status: str | None = None) -> None:
                bar.update(tid, advance=steps, **({"status": status} if status is not None else {}))

            yield advance

    return reporter


def _print_version(value: bool) -> None:
    """``--version``: print and exit before any command is required."""
    if value:
        out.print(f"corpmerge {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; only results and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details (debug level)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """Shared options: set up logging and progress reporting."""
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_NotProgress())  # the bars show progress on a terminal
    else:  # logs, pipes, CI: plain timestamped lines, progress lines included
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(level)
    handler.addFilter(_NotRecord())
    if not verbose:
        handler.addFilter(_NoTracebacks())  # kept in corpmerge.log; -v shows them here too
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("corpmerge").setLevel(min(level, logging.INFO))  # INFO always reaches a run's log file
    bars = err.is_terminal and not quiet
    progress.set_reporter(progress.tee(_rich_reporter(), progress.log_reporter()) if bars else progress.log_reporter())


class _NotProgress(logging.Filter):
    """Keeps progress lines off the terminal while bars draw them (they still reach the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != progress.log.name


class _NoTracebacks(logging.Filter):
    """Keeps the tracebacks of unexpected errors off the terminal (they still reach the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != TRACEBACK_LOGGER


class _NotRecord(logging.Filter):
    """Keeps the record of what the terminal already showed (tables, results) off the terminal; it reaches the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != RECORD_LOGGER


class _LazyFileHandler(logging.FileHandler):
    """A log file made (with its folder) at the first record, i.e. after the pipeline checked the location.

    ``made_folder``: its folder did not exist when the command started; ``traceback``: a traceback went into it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self.made_folder = not path.parent.exists()
        self.traceback = False

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        self.traceback = self.traceback or record.name == TRACEBACK_LOGGER
        try:
            super().emit(record)
        except OSError:
            self.close()  # an unusable work folder is reported by the pipeline's check in one line


def _file_handlers() -> list[_LazyFileHandler]:
    return [h for h in logging.getLogger("corpmerge").handlers if isinstance(h, _LazyFileHandler)]


def _log_refusal(line: str) -> None:
    """The error line of an exit-2 refusal into the run's log; a refused command that made its work folder and left
    nothing there but a log without a traceback leaves nothing behind (the folder and its log removed)."""
    for handler in _file_handlers():
        log_file = Path(handler.baseFilename)
        folder = log_file.parent
        if handler.made_folder and not handler.traceback and (not folder.is_dir() or {p.name for p in folder.iterdir()} <= {log_file.name}):
            handler.close()
            if folder.is_dir():
                log_file.unlink(missing_ok=True)
                folder.rmdir()
            continue
        handler.handle(logging.LogRecord("corpmerge", logging.ERROR, __file__, 0, "error: %s", (line,), None))


def record(renderable: Any) -> None:
    """What the terminal showed (a table, a result line), as plain text into the run's log file only."""
    if not _file_handlers():
        return
    console = Console(file=io.StringIO(), width=160, color_system=None, soft_wrap=True)
    console.print(renderable)
    logging.getLogger(RECORD_LOGGER).info("%s", console.file.getvalue().rstrip())


def _log_to_file(path: Path) -> None:
    """Also log to ``path`` (the work folder's corpmerge.log), progress lines included, appending across resumes."""
    handler = _LazyFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("corpmerge")
    logger.addHandler(handler)
    handler.setLevel(min(logger.level, logging.INFO))


def _where_traceback_went() -> str:
    logs = [h.baseFilename for h in logging.getLogger("corpmerge").handlers if isinstance(h, _LazyFileHandler)]
    if logging.getLogger("corpmerge").isEnabledFor(logging.DEBUG):
        return "traceback above" + (f" and in {logs[0]}" if logs else "")
    return f"traceback in {logs[0]}" if logs else "run again with -v to see the traceback"


def _one_line(message: str) -> str:
    """An error message as one line of bounded length (the middle of an overlong one is cut)."""
    line = " ".join(message.split())
    if len(line) <= MAX_ERROR_CHARS:
        return line
    return f"{line[: MAX_ERROR_CHARS * 2 // 3]} … {line[-MAX_ERROR_CHARS // 3 :]}"


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn CorpmergeError into one line on stderr and exit code 2; Ctrl-C into exit 130; any other exception
    (a bug) into one line and exit code 1, its traceback kept in the run's corpmerge.log (and on stderr with -v)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CorpmergeError as exc:
            err.print(f"[bold red]error:[/] {escape(_one_line(str(exc)))}", highlight=False)
            _log_refusal(_one_line(str(exc)))
            raise typer.Exit(exc.exit_code) from None
        except (SandboxUnavailable, SandboxError) as exc:  # raised from inside an lm-eval task's reward
            err.print(f"[bold red]error:[/] {escape(_one_line(str(exc)))}", highlight=False)
            raise typer.Exit(2) from None
        except Terminated as exc:
            logging.getLogger(TRACEBACK_LOGGER).error("terminated by %s: finished work is kept", exc.signal_name)  # to the log file
            err.print(f"[yellow]terminated[/] ({exc.signal_name}): finished work is kept; run the same command again to continue")
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            logging.getLogger(TRACEBACK_LOGGER).error("interrupted (Ctrl-C): finished work is kept")
            err.print("[yellow]interrupted[/]: finished work is kept; run the same command again to continue")
            raise typer.Exit(130) from None
        except (click.exceptions.Exit, typer.Exit, click.ClickException):
            raise
        except Exception as exc:  # a bug, not a bad input: one line here, the traceback in the log
            log_traceback(f"corpmerge {fn.__name__}", exc)
            line = _one_line(f"unexpected {type(exc).__name__}: {first_line(exc)}")
            err.print(f"[bold red]error:[/] {escape(line)} ({_where_traceback_went()})", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@_user_errors
def validate(recipe: Path = RecipeArg, output: Path | None = OutputOpt, overwrite: bool = OverwriteOpt) -> None:
    """Check a recipe (schema, method parameters, base model, noise scheme, output and work folders) without loading weights."""
    from corpmerge.output.location import check_output_location
    from corpmerge.plan import check_recipe
    from corpmerge.recipe import load_recipe
    from corpmerge.tracking import require as require_trackers

    parsed = load_recipe(recipe).with_output(output)
    require_trackers(parsed.tracking)
    checked = check_recipe(parsed, needs_rewards=parsed.scoring is None, log_notes=False, data_optional=True)
    check_output_location(parsed, checked.base, overwrite)
    out.print(
        f"[green]ok[/]: {escape(str(recipe))} — base {escape(parsed.base_model)}, {counted(len(checked.entries), 'entry', 'entries')}, "
        f"method {checked.method.name}, {len(checked.grid)} grid point(s), gate {'on' if parsed.gate.enabled else 'off'}, "
        f"output {escape(parsed.output.path)}",
        highlight=False,
    )
    for note in checked.notes:
        out.print(f"[yellow]note[/]: {escape(note)}", highlight=False)


@app.command()
@_user_errors
def merge(recipe: Path = RecipeArg, output: Path | None = OutputOpt, overwrite: bool = OverwriteOpt) -> None:
    """Merge a population whose entries already carry rewards (gate disabled) into a model folder."""
    from corpmerge.merge import merge_recipe
    from corpmerge.recipe import load_recipe

    path, result = merge_recipe(load_recipe(recipe), output, overwrite)
    amps = result.final_amplitudes()
    detail = f"{counted(amps.nonzero().seeds.size, 'seed')}, update RMS {amps.rms():.3g}" if amps is not None else "tensorwise update"
    out.print(f"[green]merged[/] with {result.method} ({counted(len(result.elites), 'elite')}, {detail}) → {escape(str(path))}", highlight=False)


REBUILT_DIFFERS_EXIT = 4


@app.command()
@_user_errors
def rebuild(
    lineage: Path = typer.Argument(..., help="An output folder's corpmerge.yaml (or the folder)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the rebuilt model to."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write a model again from its lineage and its base, and say whether the weights equal the shipped ones bit for bit."""
    from corpmerge.model_io import resolve_base
    from corpmerge.rebuild import open_lineage
    from corpmerge.rebuild import rebuild as rebuild_model

    read = open_lineage(lineage)
    path, comparison = rebuild_model(read, resolve_base(read.recipe.base_model), output, overwrite)
    if comparison.equal:
        out.print(f"[green]rebuilt[/] → {escape(str(path))}: all {comparison.tensors} tensors equal the shipped ones bit for bit", highlight=False)
        return
    first = escape(comparison.differing[0])
    out.print(
        f"[red]rebuilt[/] → {escape(str(path))}: {len(comparison.differing)} of {comparison.tensors} tensors differ from the shipped ones "
        f"(first: {first}); is the base the one pinned in the lineage's `base`?",
        highlight=False,
    )
    raise typer.Exit(REBUILT_DIFFERS_EXIT)


@app.command()
@_user_errors
def score(recipe: Path = RecipeArg) -> None:
    """Score every population entry on the support fold A with lm-eval (resumable); write rewards.yaml."""
    from corpmerge.pipeline import score_recipe
    from corpmerge.recipe import load_recipe

    parsed = load_recipe(recipe)
    _log_to_file(parsed.output.work_path / "corpmerge.log")
    result = score_recipe(parsed)
    size = result["fold_size"]
    ranked = sorted(zip(result["entries"], result["examples"]), key=lambda pair: -pair[0].reward)
    table = Table("rank", "seed", "sigma", "reward", "examples", title=f"top entries (base on fold A: {result['base_accuracy_A']:.4f}, {size} examples)")
    for rank, (entry, n) in enumerate(ranked[:10], 1):
        estimate = n < size  # racing stopped it: the reward is extrapolated from n examples
        table.add_row(
            str(rank),
            str(entry.seed),
            f"{entry.sigma:g}",
            f"≈{entry.reward:.4f}" if estimate else f"{entry.reward:.4f}",
            f"{n} (estimate)" if estimate else str(n),
        )
    stopped = sum(n < size for n in result["examples"])
    if stopped:
        table.caption = f"≈: racing stopped {stopped} entries early; their rewards are estimates from fewer examples"
    entries = result["entries"]
    done = Text(f"{len(entries)} rewards → {result['rewards_path']}")
    out.print(table)
    out.print(done)
    record(Group(table, done))


ABSTAINED_EXIT = 3
ABSTAIN_ADVICE = (
    "what to try next: more support examples (scoring.support.limit) so the gate can tell a gain from noise; "
    "a larger population (population.size); σ nearer the best-rewarded level in the reward-by-σ panel of `corpmerge diagnose`'s plot; "
    "`corpmerge diagnose` to see whether the elites share structure at all (docs/sizing.md: Sizing a run)"
)


@app.command()
@_user_errors
def run(
    recipe: Path = RecipeArg,
    output: Path | None = OutputOpt,
    overwrite: bool = OverwriteOpt,
    strict: bool = typer.Option(
        False, "--strict", help=f"Exit with code {ABSTAINED_EXIT} when the gate abstains (for scripts: `run --strict && lm_eval ...`)."
    ),
    report_to: list[str] = typer.Option(
        [], "--report-to", help="Log the run to a tracker as it goes: tensorboard, wandb (repeat for both; none: no tracker); replaces tracking.report_to."
    ),
) -> None:
    """Do everything: sample → score → candidates → gate (fold B) → probe (fold C) → write or abstain → evaluate."""
    from corpmerge.pipeline import run_recipe
    from corpmerge.recipe import load_recipe
    from corpmerge.report.view import load_report, report_view

    loaded = load_recipe(recipe)
    parsed = loaded.with_output(output).with_report_to(report_to)
    _log_to_file(parsed.output.work_path / "corpmerge.log")
    _say_where_the_store_is(loaded, parsed)
    report, path = load_report(run_recipe(parsed, None, overwrite)["report_path"])  # what the file holds, read as any reader reads it
    view = report_view(report, path)
    out.print(view)
    record(view)
    if report.gate.enabled and not report.gate.accepted:
        out.print(f"[yellow]abstained[/]: {escape(ABSTAIN_ADVICE)}", highlight=False)
        record(f"abstained: {ABSTAIN_ADVICE}")
        if strict:
            raise typer.Exit(ABSTAINED_EXIT)


def _say_where_the_store_is(recipe: Any, moved: Any) -> None:
    """``-o`` moves the work folder (and with it the default score store) to ``<output>.work``: say so, and that the
    scores in the recipe's own work folder are not reused, when there are any."""
    if recipe.scoring is None or recipe.scoring.store or recipe.output.work_dir or moved.output.work_path == recipe.output.work_path:
        return
    logger = logging.getLogger("corpmerge.cli")
    old = recipe.output.work_path / "scores.sqlite"
    line = f"-o: the work folder and score store move to {moved.output.work_path} (the recipe's output.path uses {recipe.output.work_path})"
    if old.is_file():
        logger.warning("%s; the scores in %s are not reused: set output.work_dir or scoring.store to keep one store", line, old)
    else:
        logger.info("%s; set output.work_dir or scoring.store to keep the store in one place", line)


@app.command()
@_user_errors
def report(
    folder: Path = typer.Argument(
        ...,
        help="A run's output folder or work folder, or its report.json. A folder without report.json falls back to "
        "<folder>.work, where an abstained run leaves its report.",
    ),
) -> None:
    """Re-render a finished run's tables and report.png from its report.json, without loading a model."""
    from corpmerge.report.plots import render_report_dir

    table, _ = render_report_dir(folder)
    out.print(table)


@app.command()
@_user_errors
def diagnose(
    recipe: Path = RecipeArg,
    top: int = typer.Option(64, "--top", min=4, help="Number of top-rewarded elites in the sketch."),
    coords: int = typer.Option(32, "--coords", min=1, help="Noise coordinates per tensor in the sketch."),
    k: int = typer.Option(8, "--k", min=1, help="Principal subspace dimension."),
    splits: int = typer.Option(20, "--splits", min=2, help="Random half splits."),
) -> None:
    """Split-half diagnostic (paper §3): mean-consensus and subspace-excess of the elites, with a PNG plot."""
    from corpmerge.diagnosis import diagnose_recipe
    from corpmerge.recipe import load_recipe

    result = diagnose_recipe(load_recipe(recipe), top, coords, k, splits)
    at = f" at quantile {result['quantile']:g}" if result["quantile"] is not None else ""
    table = Table(
        "statistic",
        "mean",
        "95% lower bound",
        "verdict",
        title=f"split-half over {result['splits']} splits of {result['elites']} elites (the top of {result['entries']} entries{at}; "
        f"{result['sketch_dims']} sketch dims, k={result['k']})",
    )
    for name, st in result["statistics"].items():
        table.add_row(name.replace("_", "-"), f"{st['mean']:+.4f}", f"{st['lower95']:+.4f}", "[green]stable[/]" if st["stable"] else "not stable")
    out.print(table)
    out.print(f"plot → {escape(result['plot'])}", highlight=False)


@app.command()
@_user_errors
def ensemble(
    recipe: Path = RecipeArg,
    top_k: list[int] = typer.Option([1, 50], "--top-k", "-k", help="Vote sizes to report (repeat the option), e.g. -k 1 -k 50."),
) -> None:
    """RandOpt baseline: majority vote of the top-K perturbed models on the evaluate split, vs the base (and the merged model in output.path, if any)."""
    from corpmerge.output.report_schema import HeldOut
    from corpmerge.pipeline import ensemble_recipe
    from corpmerge.recipe import load_recipe
    from corpmerge.report.view import render_evaluation

    if any(k < 1 for k in top_k):
        raise CorpmergeError("--top-k: vote sizes must be ≥ 1")
    result = ensemble_recipe(load_recipe(recipe), sorted(set(top_k)))
    render_evaluation(out, HeldOut.model_validate(result["evaluation"]), result["method"])


@app.command()
@_user_errors
def push(
    out_dir: Path = typer.Argument(..., help="A finished corpmerge output folder."),
    repo_id: str = typer.Argument(..., help="Hub repository, e.g. user/my-corp-model (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to push to (created if missing)."),
    commit_message: str | None = typer.Option(None, "--commit-message", help="Commit message."),
) -> None:
    """Push an output folder to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT)."""
    from corpmerge.output.hub import push_folder

    url = push_folder(out_dir, repo_id, private=private, revision=revision, commit_message=commit_message)
    out.print(f"[green]pushed[/] {escape(str(out_dir))} → {escape(url)}", highlight=False)


@app.command()
def tasks(path: bool = typer.Option(False, "--path", help='Print only the include path, e.g. `lm_eval --include_path "$(corpmerge tasks --path)"`.')) -> None:
    """List corpmerge's lm-eval tasks and the include path that lets `lm_eval` use them too."""
    from corpmerge.tasks import list_tasks, tasks_dir

    if path:
        out.print(str(tasks_dir()), highlight=False, soft_wrap=True)
        return
    table = Table("task", "what it is")
    for name, summary in list_tasks().items():
        table.add_row(name, summary)
    out.print(table)
    out.print(f"lm_eval --model hf --include_path {tasks_dir()} --tasks <task> ...", highlight=False, soft_wrap=True)


@app.command()
def methods() -> None:
    """List the merge methods and their parameters (defaults)."""
    from corpmerge.methods import get_method, method_names

    table = Table("method", "what it does", "parameters (default)")
    for name in method_names():
        method = get_method(name)
        params = ", ".join(f"{f.alias or n}={f.default}" for n, f in method.params.model_fields.items()) or "—"
        table.add_row(name, method.summary, params)
    out.print(table)


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global flags (-q, -v, --version) given after the subcommand in front of it, as git and mergekit users type them.

    Values of the subcommand's own options (``-o -q`` names a folder "-q") and everything after ``--`` stay put.
    """
    at = next((i for i, arg in enumerate(args) if not arg.startswith("-")), None)  # global flags take no values
    command = typer.main.get_command(app).commands.get(args[at]) if at is not None else None
    if command is None:
        return args
    takes_value = {
        name
        for param in command.params
        if param.param_type_name == "option" and not param.is_flag and not param.count
        for name in param.opts + param.secondary_opts
    }
    moved: list[str] = []
    kept: list[str] = []
    rest = args[at + 1 :]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            kept += rest[i:]
            break
        if arg in takes_value:
            kept += rest[i : i + 2]
            i += 2
            continue
        (moved if arg in GLOBAL_FLAGS or (len(arg) > 2 and arg[0] == "-" and set(arg[1:]) <= {"q", "v"}) else kept).append(arg)
        i += 1
    return moved + args[: at + 1] + kept


def _terminate(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


def main() -> None:
    """Console-script entry point. SIGTERM ends a command as Ctrl-C does (finished work kept), with exit 128 + 15."""
    signal.signal(signal.SIGTERM, _terminate)
    app(args=hoist_global_options(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
