"""Failures of remote storage in one place: an unreachable S3 endpoint or refused credentials become a
`RemoteError` whose message is one line naming the operation, what it was doing and the endpoint:

    ingest: listing s3://bucket/videos at http://127.0.0.1:9000: cannot connect (EndpointConnectionError)
    cache: reading s3://bucket/a.mp4 at the AWS default endpoint: credentials refused (The AWS Access Key Id ...)

The CLI prints that line and exits with status 4 (`opensora --verbose` or OPENSORA_DEBUG=1 adds the traceback).
Credentials never appear in a message: only the endpoint URL, and the secrets of the environment are masked
in whatever the server answered.

A remote failure is not a property of a file: ingest, captioning and the dataset raise it instead of counting
the file as unreadable, so a rerun once the store is back does the files that were missed.

dvc is imported inside the functions that sync with the remote: the CLI imports this module at start-up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

EXIT_CODE = 4  # 2: bad parameters, 3: training diverged; 4: the remote failed, the same command can be rerun
DEBUG_ENV = "OPENSORA_DEBUG"
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# S3 error codes that mean "who you are was not accepted", as s3fs/botocore report them
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                     "InvalidClientTokenId", "AuthorizationHeaderMalformed")


class RemoteError(Exception):
    """A remote store could not be reached or refused the credentials; str() is the one-line message.

    Deliberately not an OSError/RuntimeError: code that treats those as "this file is bad" or "the job failed"
    must not swallow it."""

    def __init__(self, operation: str | None, target: str, endpoint: str, reason: str, note: str = ""):
        self.operation, self.target, self.endpoint, self.reason, self.note = operation, target, endpoint, reason, note
        super().__init__(self.message)

    @property
    def message(self) -> str:
        prefix = f"{self.operation}: " if self.operation else ""
        return f"{prefix}{self.target} at {self.endpoint}: {self.reason}" + (f"; {self.note}" if self.note else "")

    def __str__(self) -> str:
        return self.message


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def s3_endpoint() -> str:
    """The S3 endpoint the AWS environment points at (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), for messages."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"


def _mask_secrets(text: str) -> str:
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def remote_failure_reason(exc: BaseException) -> str | None:
    """Why `exc` (or an exception it was raised from) is a remote failure: "cannot connect (...)" or
    "credentials refused (...)"; None when it is something else (a bad file, a bug)."""
    for e in _chain(exc):
        if isinstance(e, RemoteError):
            return e.reason
        name, module = type(e).__name__, type(e).__module__
        if module.startswith("botocore"):
            if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
                return "no AWS credentials found (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws)"
            if name in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                        "ProxyConnectionError", "SSLError", "ConnectionError", "HTTPClientError"):
                return f"cannot connect ({name})"
            code = getattr(e, "response", {}).get("Error", {}).get("Code") if name == "ClientError" else None
            if code in _CREDENTIAL_CODES:
                return f"credentials refused ({code})"
        if module.startswith("aiohttp") and ("Connect" in name or "ServerDisconnected" in name or "Timeout" in name):
            return f"cannot connect ({name})"
        if isinstance(e, PermissionError) and not e.filename:  # s3fs's translation of a 403; local files have a name
            return f"credentials refused ({_mask_secrets(str(e))[:200]})"
        if isinstance(e, (ConnectionError, TimeoutError)):
            return f"cannot connect ({name})"
    return None


def as_remote_error(exc: BaseException, target: str, operation: str | None = None,
                    endpoint: str | None = None) -> RemoteError | None:
    """`exc` as a RemoteError about `target` (kept as it is when it already is one), or None if it is not remote."""
    if isinstance(exc, RemoteError):
        if operation and not exc.operation:
            exc.operation = operation
        return exc
    reason = remote_failure_reason(exc)
    if reason is None:
        return None
    return RemoteError(operation, target, endpoint or s3_endpoint(), reason)


@contextlib.contextmanager
def remote_operation(operation: str, target: str, endpoint: str | None = None) -> Iterator[None]:
    """Turn remote failures inside the block into a RemoteError "<operation>: <target> at <endpoint>: <reason>";
    a RemoteError raised deeper keeps its target and gets `operation` if it had none. Other errors pass."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only remote failures are translated; everything else re-raised as is
        err = as_remote_error(e, target, operation, endpoint)
        if err is None:
            raise
        if err is e:
            raise
        raise err from e


# ------------------------------------------------------------------------------------------------ DVC remotes

# DVC's own words for the two failures, as its S3 plugin (dvc-s3 / s3fs / botocore) prints them
_DVC_CREDENTIALS = ("403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                    "Unable to locate credentials", "ExpiredToken")
_DVC_CONNECT = ("Could not connect", "EndpointConnectionError", "Connection refused", "Connect timeout",
                "timed out", "Name or service not known", "Cannot connect")


def dvc_remote(remote: str | None = None, cwd: str | None = None) -> tuple[str, str, str]:
    """(name, url, endpoint) of a DVC remote of the repository at `cwd` (the default remote if None)."""
    from dvc.repo import Repo

    with Repo(cwd or ".") as repo:
        conf = repo.config
        name = remote or conf["core"].get("remote")
        if not name or name not in conf["remote"]:
            raise RemoteError("dvc", f"remote {name or '(no default)'}", "(not configured)",
                              "no such DVC remote: add one with `dvc remote add -d <name> s3://bucket/path`")
        section = conf["remote"][name]
        return name, str(section.get("url", "")), str(section.get("endpointurl") or s3_endpoint())


def dvc_sync(command: str, remote: str | None = None, targets: list[str] | None = None, cwd: str | None = None) -> str:
    """Run `dvc push` / `dvc pull` and return its output; on failure raise a RemoteError naming the command, the
    remote and its endpoint (DVC's own output is in the traceback with --verbose / OPENSORA_DEBUG=1)."""
    if command not in ("push", "pull"):
        raise ValueError(f"dvc_sync: push or pull, not {command!r}")
    args = [sys.executable, "-m", "dvc", command, *(["-r", remote] if remote else []), *(targets or [])]
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if out.returncode == 0:
        return out.stdout
    text = out.stdout + out.stderr
    name, url, endpoint = dvc_remote(remote, cwd)
    errors = [line.removeprefix("ERROR: ").strip() for line in text.splitlines() if line.startswith("ERROR")]
    if any(w in text for w in _DVC_CREDENTIALS):
        reason = "credentials refused"
    elif any(w in text for w in _DVC_CONNECT):
        reason = "cannot connect"
    else:
        reason = "failed"
    detail = _mask_secrets(errors[-1] if errors else text.strip().splitlines()[-1] if text.strip() else f"exit {out.returncode}")
    err = RemoteError(f"dvc {command}", f"remote {name!r} ({url})", endpoint, f"{reason} ({detail[:200]})")
    err.__cause__ = RuntimeError(_mask_secrets(text))  # what --verbose shows
    raise err
