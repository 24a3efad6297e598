"""Starting one child run of `main`: a stock `mlflow run` process, or a fork of a warm server.

Both ways create the child's MLflow run with MLflow's own project code (the same tags, -P params and
parent tag as `mlflow run . -e <stage>`) and run the entry point's command line from the MLproject, so
a child run is the run a user gets from `mlflow run . -e <stage>`. They differ in what a child costs
before its work starts (measured on 2 CPU cores, README "Demo budget"):

    mlflow   `mlflow.projects.run(..., synchronous=False)`: a `mlflow run` process that starts a shell
             that starts `skindualgen <stage>`: two interpreters and the imports of torch, mlflow and
             the model libraries, ~10 s per child. Needed for env managers other than `local`.
    fork     one multiprocessing fork server per `main`, started with the stage modules imported
             (`PRELOAD`); each child is a fork of it that runs `skindualgen <stage> ...` (the same click
             command, argv and environment) in a fresh process of its own, ~0.1 s per child. A child
             still exits with the command's status, prints to main's output, and a killed child is a
             dead process whose run `main` marks FAILED.

`launch` picks `fork` for env manager `local` (the default) unless told otherwise.
"""
from __future__ import annotations

import multiprocessing
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow

from harness.errors import ConfigError

LAUNCHERS = ("auto", "fork", "mlflow")

# what the fork server imports once, before any child is forked: torch, mlflow, the model libraries and
# every stage (importing torch starts no thread, so forking after it is safe)
# (not entrypoints.cli itself: run as `python -m entrypoints.cli`, it is the main module, which each child
# runs again as __mp_main__, and runpy warns when that module is already imported)
PRELOAD = ["torch", "mlflow", "mlflow.pytorch", "entrypoints.common", "entrypoints.options", "harness.data.prepare",
           "harness.dualgen.train",
           "harness.dualgen.generate", "harness.quality", "harness.judges", "harness.downstream.reference",
           "harness.downstream.classify",
           "harness.downstream.segment", "harness.downstream.explain", "harness.report", "harness.registry"]


@dataclass
class Child:
    """A started child: its run and `poll()` -> None while it runs, else its exit status."""
    run_id: str
    poll: Callable[[], int | None]


def choose(launcher: str, env_manager: str) -> str:
    """The launcher `auto` means: fork for the local env manager, mlflow run otherwise."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "fork" and env_manager != "local":
        raise ConfigError(f"--launcher fork runs children in main's own environment: it needs --env-manager "
                         f"local, got {env_manager!r} (use --launcher mlflow)")
    if launcher == "auto":
        return "fork" if env_manager == "local" else "mlflow"
    return launcher


def launch_mlflow(project_dir: Path, entry_point: str, params: dict[str, str], experiment: str,
                  env_manager: str) -> Child:
    """The stock way: `mlflow run` of the entry point, asynchronously, in the current environment."""
    submitted = mlflow.projects.run(str(project_dir), entry_point=entry_point, parameters=params,
                                    env_manager=env_manager, experiment_name=experiment, synchronous=False)
    return Child(submitted.run_id, submitted.command_proc.poll)


_context = None


def fork_context():
    """The multiprocessing fork-server context (its server starts at the first child, imports PRELOAD
    once, and ends with this process)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def start_server() -> None:
    """Start the fork server now (its imports take ~10 s), so that it is ready when the first child is."""
    fork_context()
    from multiprocessing import forkserver
    forkserver.ensure_running()


def _run_command(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """In the forked child: the environment and folder `mlflow run` would give the command, then the
    `skindualgen` command itself (its SystemExit status is the process's exit status)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit():          # torch read OMP_NUM_THREADS when the server imported it: apply the child's
        import torch
        torch.set_num_threads(int(threads))
    from entrypoints.cli import cli
    cli.main(args=argv, prog_name="skindualgen")


def launch_fork(project_dir: Path, entry_point: str, params: dict[str, str], experiment: str) -> Child:
    """The run as `mlflow run` creates it, its command as the MLproject writes it, run in a forked child."""
    from mlflow.projects import utils as project_utils
    from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    work_dir = project_utils.fetch_and_validate_project(str(project_dir), None, entry_point, params)
    project = project_utils.load_project(work_dir)
    run = project_utils.get_or_create_run(None, str(project_dir), experiment_id, work_dir, None, entry_point, params)
    mlflow.MlflowClient().set_tag(run.info.run_id, MLFLOW_PROJECT_BACKEND, "local")
    [command] = project_utils.get_entry_point_command(project, entry_point, params, None)
    program, *argv = shlex.split(command)
    if program != "skindualgen":
        raise ConfigError(f"MLproject entry point {entry_point!r} runs {program!r}; the fork launcher runs "
                         f"`skindualgen` commands only (use --launcher mlflow)")
    env = {**os.environ, **project_utils.get_run_env_vars(run.info.run_id, experiment_id)}
    proc = fork_context().Process(target=_run_command, args=(argv, env, str(work_dir)),
                                  name=f"{entry_point} {run.info.run_id[:8]}")
    proc.start()

    def poll() -> int | None:
        return proc.exitcode            # None while alive; a signal's death is -signal

    return Child(run.info.run_id, poll)
