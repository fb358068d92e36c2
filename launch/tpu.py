#!/usr/bin/env python3
"""Create, set up, train on, watch, stop and delete a Cloud TPU VM or pod slice.

Every action is one or more `gcloud` commands. `--dry-run` prints them, shell-quoted,
one per line, and runs nothing (not even gcloud for a default project). Standard
library only (plus this checkout's ssrl_jax/cli_errors.py), so it runs on any machine with
Python 3.8+ and the gcloud CLI.

    python launch/tpu.py --name my-tpu --zone us-east5-a create --accelerator-type v5p-64
    python launch/tpu.py --name my-tpu --zone us-east5-a setup
    python launch/tpu.py --name my-tpu --zone us-east5-a train --workdir gs://B/run1 \\
        -- --config.model.path=gs://B/models/Llama-3.1-8B-Instruct
    python launch/tpu.py --name my-tpu --zone us-east5-a logs
    python launch/tpu.py --name my-tpu --zone us-east5-a stop
    python launch/tpu.py --name my-tpu --zone us-east5-a delete

With `--slices N` (multi-slice, data parallel over DCN) one queued resource holds N slices
named NAME-0 ... NAME-(N-1); every command then addresses each of them, and `train` tells
the trainer `--config.mesh_layout.num_slices=N`.

Arguments after `--` go to the trainer (`train`) or to gcloud (`create`). The global
options may come before or after the subcommand. See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

Argv = List[str]

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script from a checkout: our error style (stdlib only)
    sys.path.insert(0, str(REPO_ROOT))
from ssrl_jax.cli_errors import ArgumentParser  # noqa: E402
# Paths on each TPU VM, relative to the login user's home directory.
REMOTE_SRC = "ssrl_jax"
REMOTE_TARBALL = "ssrl_jax-src.tar.gz"
REMOTE_VENV = "ssrl_venv"
REMOTE_LOGS = "ssrl_logs"
PID_FILE = f'"$HOME/{REMOTE_LOGS}/train.pid"'  # a shell word, expanded on the worker
# The local tarball goes into a fresh private directory (tempfile.mkdtemp, mode 0700) that
# is removed after the upload; a dry run prints this placeholder instead of making one.
DRY_RUN_TARBALL_DIR = os.path.join(tempfile.gettempdir(), "ssrl_jax-src.XXXXXXXX")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TAR_EXCLUDES = (".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis",
                "*.egg-info", "build", "dist")

LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
UV_INSTALLER = "https://astral.sh/uv/install.sh"
# The TPU software version to boot, by accelerator generation (Cloud TPU docs,
# "TPU software versions": the common versions for JAX and PyTorch).
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
# Queued-resource states after which waiting is pointless.
FAILED_STATES = ("FAILED", "SUSPENDED", "SUSPENDING")
MAX_DESCRIBE_ERRORS = 5  # consecutive failed `describe` calls before giving up


class UsageError(Exception):
    """A value the user must supply is missing or malformed."""


def check_env_name(name: str, flag: str) -> str:
    """`name` if it is a shell variable name; UsageError otherwise (it goes into a remote
    shell command unquoted, so anything else could run commands on the workers)."""
    if not ENV_NAME.fullmatch(name):
        raise UsageError(f"{flag}: {name!r} is not an environment variable name (letters, "
                         "digits and _, not starting with a digit)")
    return name


class Target(NamedTuple):
    """Which TPU the commands address. `project` None: gcloud's configured project.
    `slices` > 1: a multi-slice queued resource whose nodes are `nodes(target)`."""

    name: str
    zone: str
    project: Optional[str] = None
    slices: int = 1


def nodes(target: Target) -> List[str]:
    """The TPU nodes (slices) of the queued resource: itself, or NAME-0 ... NAME-(N-1), the
    names gcloud gives the nodes of `--node-count=N --node-prefix=NAME`."""
    if target.slices == 1:
        return [target.name]
    return [f"{target.name}-{i}" for i in range(target.slices)]


# ------------------------------------------------------------------- builders ----

def location_flags(target: Target) -> Argv:
    """`--zone=Z [--project=P]` for any gcloud TPU command."""
    flags = [f"--zone={target.zone}"]
    if target.project:
        flags.append(f"--project={target.project}")
    return flags


def runtime_version_for(accelerator_type: str) -> str:
    """The default TPU software version for an accelerator type such as `v5p-64`."""
    generation = accelerator_type.rsplit("-", 1)[0]
    if generation not in RUNTIME_VERSIONS:
        raise UsageError(f"no default --runtime-version for --accelerator-type "
                         f"{accelerator_type!r} (known: {', '.join(RUNTIME_VERSIONS)}); "
                         "pass --runtime-version")
    return RUNTIME_VERSIONS[generation]


def create_argv(target: Target, accelerator_type: str, runtime_version: str,
                provisioning: Optional[str] = None, extra: Sequence[str] = ()) -> Argv:
    """`queued-resources create` for one node named like the queued resource (or, with
    `target.slices` > 1, that many nodes named by `nodes`).

    `provisioning` is None (on demand), "spot", "reserved" or "best-effort"; gcloud
    has `--best-effort` only in its alpha track, so that one uses `gcloud alpha`.
    """
    track = ["alpha"] if provisioning == "best-effort" else []
    node_flags = ([f"--node-id={target.name}"] if target.slices == 1 else
                  [f"--node-count={target.slices}", f"--node-prefix={target.name}"])
    argv = ["gcloud", *track, "compute", "tpus", "queued-resources", "create", target.name,
            *node_flags, *location_flags(target),
            f"--accelerator-type={accelerator_type}", f"--runtime-version={runtime_version}"]
    if provisioning:
        argv.append(f"--{provisioning}")
    return argv + list(extra)


def describe_argv(target: Target) -> Argv:
    """Prints just the queued resource's state (WAITING_FOR_RESOURCES, ACTIVE, ...)."""
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", target.name,
            *location_flags(target), "--format=value(state.state)"]


def tar_argv(source: Path, dest: str) -> Argv:
    """A gzipped tarball of the source tree without VCS, venvs and caches."""
    return ["tar", "-czf", dest, *(f"--exclude={p}" for p in TAR_EXCLUDES), "-C", str(source),
            "."]


def scp_argv(target: Target, local: str, remote: str, worker: str = "all",
             node: Optional[str] = None) -> Argv:
    """Copies a local file to `remote` (relative to home) on the workers of a node."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local,
            f"{node or target.name}:{remote}", f"--worker={worker}", *location_flags(target)]


def ssh_argv(target: Target, command: str, worker: str = "all",
             node: Optional[str] = None) -> Argv:
    """Runs a shell command on the workers of a node (all of them at once for `all`)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node or target.name,
            f"--worker={worker}", *location_flags(target), "--command", command]


def run_on_every_node(target: Target, command: str, dry_run: bool) -> None:
    for node in nodes(target):
        run(ssh_argv(target, command, node=node), dry_run)


def delete_argv(target: Target, plain_vm: bool = False) -> Argv:
    """Deletes the queued resource with its node, or a TPU VM made without one."""
    if plain_vm:
        return ["gcloud", "compute", "tpus", "tpu-vm", "delete", target.name,
                *location_flags(target), "--quiet"]
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", target.name,
            *location_flags(target), "--force", "--quiet"]


# ------------------------------------------------------- remote shell scripts ----
# Each is one line of POSIX sh run by `ssh --command` in the user's home directory.
# User-given values are shlex-quoted; `$HOME` is left for the remote shell to expand.


def _script(*steps: str) -> str:
    """`set -e; step; step ...` (a step ending in `&` takes no `;`)."""
    line = "set -e"
    for step in steps:
        line += (" " if line.endswith("&") else "; ") + step
    return line


def refuse_if_running(advice: str) -> str:
    """Exits the remote script if this worker's trainer (from its pid file) is alive."""
    return (f'if [ -f {PID_FILE} ] && kill -0 "$(cat {PID_FILE})" 2>/dev/null; then '
            f'echo "$(hostname): training is running (pid $(cat {PID_FILE})); {advice}" >&2; '
            "exit 1; fi")


def fetch_source_script(repo: Optional[str], ref: Optional[str]) -> str:
    """Replaces ~/ssrl_jax with a fresh clone, or with the uploaded tarball's tree."""
    steps = [refuse_if_running("stop it before setup"), 'cd "$HOME"', f"rm -rf {REMOTE_SRC}"]
    if repo:
        steps.append(f"git clone {shlex.quote(repo)} {REMOTE_SRC}")
        if ref:
            steps.append(f"git -C {REMOTE_SRC} checkout {shlex.quote(ref)}")
    else:
        steps += [f"mkdir -p {REMOTE_SRC}", f"tar -xzf {REMOTE_TARBALL} -C {REMOTE_SRC}",
                  f"rm -f {REMOTE_TARBALL}"]
    return "; ".join(steps)


def install_script(repo: Optional[str], ref: Optional[str], python: str,
                   find_links: Optional[str]) -> str:
    """Fetches the source, makes ~/ssrl_venv and installs the package with `[tpu]`.

    The TPU images ship an older system Python than the project needs (3.11+), so
    the venv's interpreter comes from uv, which downloads a standalone CPython.
    """
    pip = [f'"$HOME/{REMOTE_VENV}/bin/pip"', "install", "-e", '".[tpu]"']
    if find_links:
        pip += ["-f", shlex.quote(find_links)]
    return _script(
        fetch_source_script(repo, ref),
        'export PATH="$HOME/.local/bin:$PATH"',
        f"command -v uv >/dev/null || curl -LsSf {UV_INSTALLER} | sh",
        f'[ -x "$HOME/{REMOTE_VENV}/bin/python" ] || '
        f'uv venv --seed --python {shlex.quote(python)} "$HOME/{REMOTE_VENV}"',
        f'"$HOME/{REMOTE_VENV}/bin/pip" install -q --upgrade pip',
        f'cd "$HOME/{REMOTE_SRC}"',
        " ".join(pip),
    )


def verify_script() -> str:
    """Each worker prints one line: host, process index/count, local/global devices."""
    code = ("import socket, jax; print(dict(host=socket.gethostname(), "
            "process=jax.process_index(), processes=jax.process_count(), "
            "local_devices=jax.local_device_count(), devices=jax.device_count()))")
    return f'"$HOME/{REMOTE_VENV}/bin/python" -c "{code}"'


def default_env(compile_cache: Optional[str]) -> List[Tuple[str, str]]:
    """(name, shell word) pairs exported before the trainer starts."""
    cache = shlex.quote(compile_cache) if compile_cache else '"$HOME/jax_cache"'
    return [
        ("PYTHONUNBUFFERED", "1"),          # log lines reach train.log as they happen
        ("TPU_STDERR_LOG_LEVEL", "1"),      # libtpu: warnings and errors to stderr
        ("JAX_COMPILATION_CACHE_DIR", cache),  # restarts on the same VMs skip compiles
    ]


def train_command(config: str, workdir: str, extra: Sequence[str]) -> str:
    """The trainer's command line; the same on every worker."""
    argv = ["-m", "ssrl_jax.train", "--config", config, "--workdir", workdir, *extra]
    return f'"$HOME/{REMOTE_VENV}/bin/python" ' + " ".join(shlex.quote(a) for a in argv)


def train_script(config: str, workdir: str, extra: Sequence[str],
                 env: Sequence[Tuple[str, str]]) -> str:
    """Starts the trainer in the background on a worker, appending to ~/ssrl_logs/train.log.

    `setsid` gives the trainer its own process group (its pid), so `stop` can end it
    and any children it forked; the pid file refuses a second concurrent start.
    """
    exports = " ".join(f"{check_env_name(name, 'env')}={value}" for name, value in env)
    return _script(
        f'mkdir -p "$HOME/{REMOTE_LOGS}"',
        refuse_if_running("run stop first"),
        f'cd "$HOME/{REMOTE_SRC}"',
        f"export {exports}",
        f"nohup setsid {train_command(config, workdir, extra)} "
        f'>> "$HOME/{REMOTE_LOGS}/train.log" 2>&1 < /dev/null &',
        f"echo $! > {PID_FILE}",
        f'echo "$(hostname): started pid $(cat {PID_FILE}), log ~/{REMOTE_LOGS}/train.log"',
    )


def logs_script(lines: int) -> str:
    """Follows the worker's train.log, also across its replacement by a new run."""
    return f'tail -n {int(lines)} -F "$HOME/{REMOTE_LOGS}/train.log"'


def stop_script(grace_seconds: int) -> str:
    """Sends SIGTERM to the trainer's process group, then SIGKILL after a grace period."""
    return (
        f'if [ ! -f {PID_FILE} ]; then echo "$(hostname): no training started here"; '
        f"else pid=$(cat {PID_FILE}); pkill -TERM -g \"$pid\" || true; "
        f'for i in $(seq {int(grace_seconds)}); do kill -0 "$pid" 2>/dev/null || break; '
        "sleep 1; done; "
        f'if kill -0 "$pid" 2>/dev/null; then pkill -KILL -g "$pid" || true; fi; '
        f'rm -f {PID_FILE}; echo "$(hostname): stopped pid $pid"; fi')


# -------------------------------------------------------------------- running ----

def run(argv: Argv, dry_run: bool) -> None:
    """Prints the command (dry run) or echoes it to stderr and runs it; exits on failure."""
    if dry_run:
        print(shlex.join(argv))
        return
    print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    code = subprocess.call(argv)
    if code:
        sys.exit(code)


def wait_until_active(target: Target, poll_seconds: float) -> None:
    """Polls the queued resource until ACTIVE; exits non-zero if it fails."""
    last, errors = None, 0
    while True:
        result = subprocess.run(describe_argv(target), capture_output=True, text=True)
        errors = errors + 1 if result.returncode else 0
        if errors >= MAX_DESCRIBE_ERRORS:
            sys.exit(f"describe failed {errors} times in a row: {result.stderr.strip()}")
        state = result.stdout.strip() or f"unknown ({result.stderr.strip()})"
        if state != last:
            print(f"{time.strftime('%H:%M:%S')} {target.name}: {state}", file=sys.stderr,
                  flush=True)
            last = state
        if state == "ACTIVE":
            return
        if state in FAILED_STATES:
            sys.exit(f"queued resource {target.name} is {state}; see "
                     f"`{shlex.join(describe_argv(target)[:-1])}`")
        time.sleep(poll_seconds)


# ------------------------------------------------------------------- commands ----

def cmd_create(args: argparse.Namespace, target: Target) -> None:
    accelerator = args.accelerator_type or os.environ.get("ACCELERATOR_TYPE")
    if not accelerator:
        raise UsageError("missing --accelerator-type (or set ACCELERATOR_TYPE), "
                         "e.g. v5litepod-8, v4-8, v5p-64")
    runtime = args.runtime_version or runtime_version_for(accelerator)
    run(create_argv(target, accelerator, runtime, args.provisioning, args.passthrough),
        args.dry_run)
    if args.no_wait:
        return
    if args.dry_run:
        run(describe_argv(target), True)  # polled until ACTIVE in a real run
        return
    wait_until_active(target, args.poll_seconds)


def cmd_setup(args: argparse.Namespace, target: Target) -> None:
    if args.ref and not args.repo:
        raise UsageError("--ref needs --repo")
    if not args.repo:
        upload_source(target, Path(args.source), args.dry_run)
    run_on_every_node(target, install_script(args.repo, args.ref, args.python,
                                             args.find_links or None), args.dry_run)
    if not args.no_verify:
        run_on_every_node(target, verify_script(), args.dry_run)


def upload_source(target: Target, source: Path, dry_run: bool) -> None:
    """Tars `source` into a private temporary directory, copies it to the workers, removes it."""
    directory = DRY_RUN_TARBALL_DIR if dry_run else tempfile.mkdtemp(prefix="ssrl_jax-src.")
    try:
        tarball = os.path.join(directory, REMOTE_TARBALL)
        run(tar_argv(source, tarball), dry_run)
        for node in nodes(target):
            run(scp_argv(target, tarball, REMOTE_TARBALL, node=node), dry_run)
    finally:
        if not dry_run:
            shutil.rmtree(directory, ignore_errors=True)


def cmd_train(args: argparse.Namespace, target: Target) -> None:
    if not args.workdir.startswith("gs://"):
        print(f"warning: --workdir {args.workdir} is not a gs:// path: each worker writes "
              "its own local copy and it is lost with the VM", file=sys.stderr)
    env = default_env(args.compile_cache)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {item!r}: expected NAME=VALUE")
        check_env_name(name, f"--env {item!r}")
        env = [(n, v) for n, v in env if n != name] + [(name, shlex.quote(value))]
    extra = list(args.passthrough)
    if target.slices > 1 and not any(a.startswith("--config.mesh_layout.num_slices")
                                     for a in extra):
        extra.append(f"--config.mesh_layout.num_slices={target.slices}")
    run_on_every_node(target, train_script(args.config, args.workdir, extra, env),
                      args.dry_run)


def cmd_logs(args: argparse.Namespace, target: Target) -> None:
    names = nodes(target)
    if not 0 <= args.slice < len(names):
        raise UsageError(f"--slice {args.slice}: the TPU has slices 0..{len(names) - 1}")
    run(ssh_argv(target, logs_script(args.lines), worker=args.worker, node=names[args.slice]),
        args.dry_run)


def cmd_stop(args: argparse.Namespace, target: Target) -> None:
    run_on_every_node(target, stop_script(args.grace_seconds), args.dry_run)


def cmd_delete(args: argparse.Namespace, target: Target) -> None:
    if args.vm and target.slices > 1:
        raise UsageError("--vm: a plain TPU VM has one slice; drop --slices")
    run(delete_argv(target, plain_vm=args.vm), args.dry_run)


# -------------------------------------------------------------------- parsing ----

def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Options accepted before or after the subcommand.

    SUPPRESS keeps a subparser from overwriting a value given before the subcommand.
    """
    parser.add_argument("--name", default=argparse.SUPPRESS,
                        help="TPU (and queued resource) name; default: $TPU_NAME")
    parser.add_argument("--zone", default=argparse.SUPPRESS, help="default: $ZONE")
    parser.add_argument("--project", default=argparse.SUPPRESS,
                        help="default: $PROJECT, else `gcloud config get-value project`; "
                             "in a dry run without either, commands omit --project")
    parser.add_argument("--slices", type=int, default=argparse.SUPPRESS,
                        help="slices of a multi-slice queued resource (nodes NAME-0 ...); "
                             "default: $SLICES, else 1")
    parser.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                        help="print the commands, one per line, and run nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tpu.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` go to the trainer (train) or to gcloud (create).")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def subcommand(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_global_options(p)
        p.set_defaults(handler=handler)
        return p

    p = subcommand("create", cmd_create, "request a TPU as a queued resource and wait "
                   "until it is ACTIVE")
    p.add_argument("--accelerator-type", help="e.g. v5litepod-8, v4-8, v5p-64, v4-64; "
                   "default: $ACCELERATOR_TYPE")
    p.add_argument("--runtime-version", help="TPU software version; default by generation: "
                   + ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items()))
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--spot", dest="provisioning", action="store_const", const="spot",
                      help="Spot VMs: cheaper, can be preempted at any time")
    tier.add_argument("--reserved", dest="provisioning", action="store_const",
                      const="reserved", help="use your project's reserved capacity")
    tier.add_argument("--best-effort", dest="provisioning", action="store_const",
                      const="best-effort", help="best-effort tier (gcloud alpha only)")
    p.add_argument("--no-wait", action="store_true", help="return once the request is made")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="how often to check the state while waiting (default 30)")

    p = subcommand("setup", cmd_setup, "install the package in a venv on every worker")
    p.add_argument("--repo", help="git URL to clone on the workers (default: upload the "
                   "local tree as a tarball)")
    p.add_argument("--ref", help="branch, tag or commit to check out (with --repo)")
    p.add_argument("--source", default=str(REPO_ROOT),
                   help="local tree to upload (default: this checkout)")
    p.add_argument("--python", default="3.12", help="Python version of the venv "
                   "(default 3.12; the project needs 3.11+)")
    p.add_argument("--find-links", default=LIBTPU_FIND_LINKS,
                   help="pip -f index for libtpu ('' for none; default: %(default)s)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the jax.device_count() check on every worker")

    p = subcommand("train", cmd_train, "start the same training command on every worker")
    p.add_argument("--config", default="configs/llama8b.py",
                   help="config file, relative to the repository (default: %(default)s)")
    p.add_argument("--workdir", required=True,
                   help="gs://BUCKET/RUN: checkpoints and metrics; reuse it to resume")
    p.add_argument("--compile-cache", help="JAX compilation cache directory "
                   "(default: ~/jax_cache on each worker; a gs:// path survives the VMs)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment variable for the trainer (repeatable)")

    p = subcommand("logs", cmd_logs, "follow a worker's training log (Ctrl-C to stop)")
    p.add_argument("--worker", default="0", help="worker index or `all` (default 0)")
    p.add_argument("--slice", type=int, default=0,
                   help="which slice's worker, with --slices (default 0)")
    p.add_argument("--lines", type=int, default=100, help="lines of history (default 100)")

    p = subcommand("stop", cmd_stop, "stop the training processes on every worker")
    p.add_argument("--grace-seconds", type=int, default=60,
                   help="wait this long after SIGTERM before SIGKILL (default 60)")

    p = subcommand("delete", cmd_delete, "delete the queued resource and its TPU")
    p.add_argument("--vm", action="store_true",
                   help="the TPU is a plain TPU VM (tpu-vm create), not a queued resource")
    return parser


def split_passthrough(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Splits at the first `--`: (our arguments, arguments passed through)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def gcloud_project() -> Optional[str]:
    """gcloud's configured project, or None."""
    try:
        out = subprocess.run(["gcloud", "config", "get-value", "project"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return None
    return out or None


def resolve_target(args: argparse.Namespace) -> Target:
    """Flag, then environment variable, then (project only, not in a dry run) gcloud."""
    name = getattr(args, "name", None) or os.environ.get("TPU_NAME")
    zone = getattr(args, "zone", None) or os.environ.get("ZONE")
    if not name:
        raise UsageError("missing --name (or set TPU_NAME)")
    if not zone:
        raise UsageError("missing --zone (or set ZONE), e.g. us-east5-a")
    slices = getattr(args, "slices", None)
    slices_text = str(slices) if slices is not None else os.environ.get("SLICES", "1")
    if not slices_text.isdigit() or int(slices_text) < 1:
        raise UsageError(f"--slices (or SLICES) must be a whole number >= 1, got {slices_text!r}")
    project = getattr(args, "project", None) or os.environ.get("PROJECT")
    if not project and not args.dry_run:
        project = gcloud_project()
        if not project:
            raise UsageError("missing --project (or set PROJECT, or run "
                             "`gcloud config set project ID`)")
    return Target(name=name, zone=zone, project=project, slices=int(slices_text))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ours, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(ours)
    args.dry_run = getattr(args, "dry_run", False)
    args.passthrough = passthrough
    if passthrough and args.command not in ("train", "create"):
        parser.error(f"arguments after -- are only for train and create, not {args.command}")
    try:
        args.handler(args, resolve_target(args))
    except UsageError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
