"""The base of every error the harness raises for bad input."""


class HarnessError(Exception):
    """An error in the user's input or environment: a bad option value, unreadable or insufficient
    data, a run, model or file that is not there, a service that cannot be reached. The message says
    what is wrong and what to do; the CLI reports it as one line, `Error: <message>`, with exit
    status 2 (entrypoints/common.py). Any other exception is a bug and keeps its traceback."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, for an error a library raised about the user's environment."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:limit]}" if first else type(e).__name__


class ConfigError(HarnessError, ValueError):
    """An option value, or a combination of options, that cannot work; the message names the option."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived (`timeout`, docker, a scheduler, a closed terminal) while a stage ran:
    its run ends KILLED with what it logged, and the CLI exits with 128 + the signal's number
    (tracking.stop_signals_raise). A BaseException, like KeyboardInterrupt: no `except Exception` eats it."""

    def __init__(self, signum: int):
        import signal
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


class TrackingLost(HarnessError):
    """The tracking store stopped answering while a stage ran, past MLflow's HTTP retries (which carry
    a stage over a short outage): the stage stops, its local files (checkpoints) are kept."""
