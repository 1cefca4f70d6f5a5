"""Environment checks of `opensora doctor`: each one short, bounded by a timeout, with a one-line verdict.

A check returns a `Check` whose status is ok, warn (works, but worth knowing), skip (not applicable or not
checkable) or fail (a stage will break). Network checks use a ~3 s connect timeout and never print credentials:
URLs are shown without their user-info part.

Each check imports what it probes (torch, botocore, dvc, av) inside its function: a missing optional dependency
fails that check, not the doctor.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from opensora_core.config import Config
from opensora_core.tracking import resolve_uri, tracking_root

CONNECT_TIMEOUT_S = 3.0
CHECK_TIMEOUT_S = 30.0  # the whole of one check (dvc's start-up is the slowest part)


@dataclass
class Check:
    name: str
    status: str   # ok | warn | skip | fail
    verdict: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def redact(url: str) -> str:
    """The URL without user:password@ (and without a query string, where tokens hide)."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _http_health(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as r:  # noqa: S310 (http(s) only, by caller)
            return 200 <= r.status < 300, f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, f"unreachable ({reason})"


def _writable_folder(path: Path) -> tuple[bool, Path]:
    """Whether `path` (a folder, created on demand) can be written: its nearest existing ancestor is writable."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK), p


# --- the checks -----------------------------------------------------------------------------------------------


def check_torch(cfg: Config, gpus: int | None) -> Check:
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    backends = [b for b, ok in (("nccl", dist.is_nccl_available()), ("gloo", dist.is_gloo_available())) if ok]
    if cuda:
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        nccl = f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}" if "nccl" in backends else "no NCCL"
        verdict = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} x {name}, {nccl}"
        if "nccl" not in backends:
            return Check("torch", "fail", verdict + ": multi-GPU jobs need NCCL")
        if gpus and gpus > n:
            return Check("torch", "warn", verdict + f": --gpus {gpus} needs more than this machine (multi-node)")
        return Check("torch", "ok", verdict)
    verdict = f"torch {torch.__version__}, no CUDA: CPU training over {'gloo' if 'gloo' in backends else 'nothing'}"
    if "gloo" not in backends:
        return Check("torch", "fail", verdict + " (torch without gloo cannot run multi-process jobs)")
    return Check("torch", "warn" if gpus else "ok", verdict + (" (GPU numbers below are predictions)" if gpus else ""))


def check_engine(cfg: Config, engine: str | None) -> Check:
    name = engine or cfg.train.engine
    if name in ("torch", "ddp"):
        return Check("engine", "ok", "torch: DistributedDataParallel (built into torch)")
    if name in ("fsdp",):
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401
        except ImportError:
            return Check("engine", "fail", "fsdp: this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")
        return Check("engine", "ok", "fsdp: torch.distributed.fsdp.fully_shard available")
    # colossalai / zero2: importable? (in a subprocess: a broken install can hang or crash the importer)
    code = "import colossalai, sys; sys.stdout.write(colossalai.__version__)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CHECK_TIMEOUT_S - 5)
    except subprocess.TimeoutExpired:
        return Check("engine", "fail", "colossalai: `import colossalai` did not finish")
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["import failed"])[-1]
        return Check("engine", "fail", f"colossalai is not importable ({last}); `make colossal-venv` or "
                     "train.engine=torch")
    return Check("engine", "ok", f"colossalai {out.stdout.strip()} importable (ZeRO-2 via LowLevelZeroPlugin)")


def check_h264(cfg: Config) -> Check:
    try:
        import av

        codec = av.codec.Codec("h264", "r")
    except Exception as e:  # ImportError, or av's UnknownCodecError
        return Check("video decode", "fail", f"PyAV cannot decode H.264 ({type(e).__name__}: {e})")
    return Check("video decode", "ok", f"PyAV {av.__version__}: {codec.name} decoder ({codec.long_name})")


def check_disk(cfg: Config, needs) -> Check:
    total = sum(n.bytes for n in needs)
    ok, folder = _writable_folder(cfg.root)
    if not ok:
        return Check("disk", "fail", f"run_dir {cfg.root}: {folder} is not writable")
    free = shutil.disk_usage(folder).free
    verdict = f"{total / 2**30:.2f} GiB to write under {cfg.root}, {free / 2**30:.1f} GiB free"
    return Check("disk", "ok" if total <= free else "fail", verdict)


def check_mlflow(cfg: Config) -> Check:
    uri = resolve_uri(cfg.tracking.uri, tracking_root(cfg))
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        ok, why = _http_health(uri.rstrip("/") + "/health")
        return Check("mlflow", "ok" if ok else "fail", f"tracking server {redact(uri)}: {why}")
    if scheme == "sqlite" or scheme in ("", "file"):
        path = Path(uri.removeprefix("sqlite:///").removeprefix("file://"))
        folder = path.parent if scheme == "sqlite" else path
        ok, where = _writable_folder(folder)
        what = f"{'SQLite store' if scheme == 'sqlite' else 'file store'} {path}"
        return Check("mlflow", "ok" if ok else "fail", f"{what}: {'writable' if ok else f'{where} is not writable'}")
    return Check("mlflow", "skip", f"tracking URI scheme {scheme!r} ({redact(uri)}): not checked")


def check_prefect(cfg: Config) -> Check:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Check("prefect", "ok", "no PREFECT_API_URL: ephemeral mode (no server needed)")
    ok, why = _http_health(url.rstrip("/") + "/health")
    return Check("prefect", "ok" if ok else "fail", f"Prefect API {redact(url)}: {why}")


def s3_bucket_reachable(bucket: str, endpoint: str | None) -> tuple[bool, str]:
    """HEAD the bucket with short timeouts and no retries (credentials from the usual AWS environment)."""
    import botocore.session
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    session = botocore.session.get_session()
    client = session.create_client(
        "s3", endpoint_url=endpoint,
        config=BotoConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=CONNECT_TIMEOUT_S,
                          retries={"max_attempts": 1, "mode": "standard"}))
    try:
        client.head_bucket(Bucket=bucket)
        return True, "bucket reachable"
    except ClientError as e:
        return False, f"HTTP {e.response.get('Error', {}).get('Code', '?')}"
    except BotoCoreError as e:
        return False, f"{type(e).__name__}: {str(e).split(':')[0]}"


def _dvc_remotes(root: Path) -> dict[str, dict]:
    """{name: options} of the project's DVC remotes (dvc's own config reader: .dvc/config + config.local)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name: dict(opts) for name, opts in repo.config.get("remote", {}).items()}


def check_dvc_remote(cfg: Config) -> Check:
    root = cfg.project_dir
    if not (root / ".dvc").is_dir():
        return Check("dvc remote", "warn", f"{root} is not a DVC repository (`opensora init` sets one up)")
    try:
        remotes = _dvc_remotes(root)
    except Exception as e:  # a malformed config is dvc's error to explain
        return Check("dvc remote", "fail", f"cannot read the DVC config: {type(e).__name__}: {e}")
    if not remotes:
        return Check("dvc remote", "warn", "no DVC remote: `dvc push` has nowhere to go (`dvc remote add -d ...`)")
    verdicts, failed = [], False
    for name, opts in remotes.items():
        url = str(opts.get("url", ""))
        parts = urlsplit(url)
        if parts.scheme == "s3":
            endpoint = opts.get("endpointurl") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            ok, why = s3_bucket_reachable(parts.netloc, endpoint)
            where = f" at {redact(endpoint)}" if endpoint else ""
            verdicts.append(f"{name} {redact(url)}{where}: {why}")
        elif not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # a path (C: on Windows)
            path = Path(url) if Path(url).is_absolute() else root / ".dvc" / url
            ok, _ = _writable_folder(path)
            verdicts.append(f"{name} {url}: {'writable' if ok else 'not writable'}")
        else:
            ok = True
            verdicts.append(f"{name} {redact(url)}: scheme {parts.scheme} not checked")
        failed |= not ok
    return Check("dvc remote", "fail" if failed else "ok", "; ".join(verdicts))


def check_data_source(cfg: Config) -> Check:
    src = cfg.data.src
    if cfg.data.source != "ingest" or not src:
        return Check("data source", "skip", f"data.source={cfg.data.source}: nothing to reach")
    if src.startswith("s3://"):
        bucket = urlsplit(src).netloc
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        ok, why = s3_bucket_reachable(bucket, endpoint)
        return Check("data source", "ok" if ok else "fail", f"data.src {redact(src)}: {why}")
    path = cfg.resolve_path(src)
    return Check("data source", "ok" if path.is_dir() else "fail",
                 f"data.src {path}: {'a folder' if path.is_dir() else 'not found'}")


def run_checks(cfg: Config, needs, gpus: int | None = None, engine: str | None = None,
               timeout_s: float = CHECK_TIMEOUT_S) -> list[Check]:
    """All checks, in parallel threads; one that outlives `timeout_s` fails with that verdict."""
    jobs = {
        "torch": lambda: check_torch(cfg, gpus), "engine": lambda: check_engine(cfg, engine),
        "video decode": lambda: check_h264(cfg), "disk": lambda: check_disk(cfg, needs),
        "mlflow": lambda: check_mlflow(cfg), "prefect": lambda: check_prefect(cfg),
        "dvc remote": lambda: check_dvc_remote(cfg), "data source": lambda: check_data_source(cfg),
    }
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs))
    futures = {name: pool.submit(fn) for name, fn in jobs.items()}
    results = []
    for name, fut in futures.items():
        try:
            results.append(fut.result(timeout=timeout_s))
        except concurrent.futures.TimeoutError:
            results.append(Check(name, "fail", f"no answer within {timeout_s:.0f} s"))
        except Exception as e:  # a check that breaks is a failed check, with its reason
            results.append(Check(name, "fail", f"{type(e).__name__}: {e}"))
    pool.shutdown(wait=False, cancel_futures=True)
    return results
