"""Commands run by the tests in a subprocess: when one fails, the test shows what the command printed."""

import shlex
import subprocess

import pytest

SHOWN = 4000
"""Characters shown of the end of each of a failed command's stdout and stderr."""


def run_command(command: list, *, timeout: float, status: int = 0, **kwargs) -> subprocess.CompletedProcess:
    """Run `command` to its end with its output captured as text (`kwargs` go to `subprocess.run`: env, cwd, ...).

    Fails the test, showing the command, its stdout and its stderr, when it exits with another status than `status`
    or runs past `timeout` seconds.
    """
    command = [str(part) for part in command]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(failure_report(command, f"ran past {timeout} s", expired.stdout, expired.stderr), pytrace=False)
    if completed.returncode != status:
        outcome = f"exited with status {completed.returncode}, not {status}"
        pytest.fail(failure_report(command, outcome, completed.stdout, completed.stderr), pytrace=False)
    return completed


def failure_report(command: list[str], outcome: str, stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    """The command, what went wrong, and the end of its stdout and stderr."""

    def shown(output: str | bytes | None) -> str:
        # (TimeoutExpired carries bytes even when the output was read as text)
        text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
        return text[-SHOWN:]

    return f"`{shlex.join(command)}` {outcome}\n--- stdout ---\n{shown(stdout)}\n--- stderr ---\n{shown(stderr)}"
