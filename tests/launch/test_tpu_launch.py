"""launch/tpu.py: the gcloud commands it prints and runs, and the shell it sends to workers.

Dry runs go through a subprocess with a PATH that has no gcloud (nor tar), so a dry run
that tried to execute anything would fail. Real runs use a fake `gcloud` that records its
arguments. The remote scripts are checked with `sh -n` and, for train/stop, run locally
against a fake venv in a temporary $HOME.
"""

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "tpu.py"
LOCATION = ["--name", "my-tpu", "--zone", "us-east5-a"]


def load_tpu():
    spec = importlib.util.spec_from_file_location("launch_tpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu = load_tpu()


def clean_env(**extra):
    """The environment without our defaults (TPU_NAME, ZONE, ...), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "SLICES")}
    env.update(extra)
    return env


def launch(*args, path="/nonexistent", **env):
    """Runs tpu.py with no gcloud on PATH; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, env=clean_env(PATH=path, **env), timeout=30)


def dry_run(*args, **env):
    """The printed commands of a successful dry run, each split back into argv."""
    result = launch("--dry-run", *args, **env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def remote(argv):
    """The --command of a `tpu-vm ssh` argv."""
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    return argv[argv.index("--command") + 1]


# ------------------------------------------------------------------- create ----

def test_create_prints_queued_resource_and_wait():
    create, describe = dry_run(*LOCATION, "create", "--accelerator-type", "v5p-64", "--spot")
    assert create[:7] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu",
                          "--node-id=my-tpu"]
    assert {"--zone=us-east5-a", "--accelerator-type=v5p-64",
            "--runtime-version=v2-alpha-tpuv5", "--spot"} <= set(create)
    assert not any(a.startswith("--project") for a in create)  # no project, no gcloud call
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe",
                            "my-tpu"]
    assert "--format=value(state.state)" in describe


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v4-8", "tpu-ubuntu2204-base"),
    ("v4-64", "tpu-ubuntu2204-base"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_default_runtime_version(accelerator, runtime):
    assert tpu.runtime_version_for(accelerator) == runtime


def test_create_options_and_passthrough():
    (create,) = dry_run(*LOCATION, "--project", "p1", "create", "--accelerator-type",
                        "v4-64", "--runtime-version", "custom", "--reserved", "--no-wait",
                        "--", "--description=two words")
    assert {"--project=p1", "--runtime-version=custom", "--reserved"} <= set(create)
    assert create[-1] == "--description=two words"
    (alpha, _) = dry_run(*LOCATION, "create", "--accelerator-type", "v5litepod-16",
                         "--best-effort")
    assert alpha[:3] == ["gcloud", "alpha", "compute"] and "--best-effort" in alpha


def test_create_errors():
    result = launch(*LOCATION, "--dry-run", "create")
    assert result.returncode == 2
    assert "--accelerator-type" in result.stderr and "ACCELERATOR_TYPE" in result.stderr
    result = launch(*LOCATION, "--dry-run", "create", "--accelerator-type", "v9x-8")
    assert result.returncode == 2 and "--runtime-version" in result.stderr
    result = launch(*LOCATION, "--dry-run", "create", "--accelerator-type", "v4-8", "--spot",
                    "--reserved")
    assert result.returncode == 2 and "not allowed with" in result.stderr


# -------------------------------------------------------------------- setup ----

def test_setup_uploads_tree_installs_and_verifies_on_all_workers():
    tar, scp, install, verify = dry_run(*LOCATION, "setup")
    local = os.path.join(tpu.DRY_RUN_TARBALL_DIR, "ssrl_jax-src.tar.gz")
    assert tar[:3] == ["tar", "-czf", local] and "--exclude=.git" in tar
    assert "--exclude=.venv" in tar and tar[-3:] == ["-C", str(SCRIPT.parents[1]), "."]
    assert scp[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", local,
                       "my-tpu:ssrl_jax-src.tar.gz"]
    assert "--worker=all" in scp
    for ssh in (install, verify):
        assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh
    assert 'install -e ".[tpu]" -f ' + tpu.LIBTPU_FIND_LINKS in remote(install)
    assert "tar -xzf ssrl_jax-src.tar.gz" in remote(install)
    assert "jax.device_count()" in remote(verify)


def test_setup_from_git():
    (install, _) = dry_run(*LOCATION, "setup", "--repo", "https://example.com/r.git",
                           "--ref", "v1", "--find-links", "")
    script = remote(install)
    assert "git clone https://example.com/r.git ssrl_jax" in script
    assert "git -C ssrl_jax checkout v1" in script and "libtpu_releases" not in script
    result = launch(*LOCATION, "--dry-run", "setup", "--ref", "v1")
    assert result.returncode == 2 and "--ref needs --repo" in result.stderr


# -------------------------------------------------------------------- train ----

def test_train_runs_the_same_command_on_all_workers():
    (ssh,) = dry_run(*LOCATION, "train", "--workdir", "gs://bucket/run 1", "--",
                     "--config.total_steps=10", "--config.data.train_files=a b.jsonl")
    assert "--worker=all" in ssh
    script = remote(ssh)
    assert ("-m ssrl_jax.train --config configs/llama8b.py --workdir 'gs://bucket/run 1' "
            "--config.total_steps=10 '--config.data.train_files=a b.jsonl' >> ") in script
    assert "nohup setsid" in script and "JAX_COMPILATION_CACHE_DIR=" in script
    assert "jax.distributed" not in script


def test_train_env_and_local_workdir_warning():
    result = launch(*LOCATION, "--dry-run", "train", "--workdir", "/tmp/run",
                    "--compile-cache", "gs://b/cache", "--env", "TPU_STDERR_LOG_LEVEL=0",
                    "--env", "X=a b")
    assert result.returncode == 0 and "not a gs:// path" in result.stderr
    script = remote(shlex.split(result.stdout))
    assert "JAX_COMPILATION_CACHE_DIR=gs://b/cache" in script
    assert "TPU_STDERR_LOG_LEVEL=0" in script and "TPU_STDERR_LOG_LEVEL=1" not in script
    assert "X='a b'" in script


@pytest.mark.parametrize("item", ["X;touch INJECTED;Y=1", "$(touch INJECTED)=1", "1X=1",
                                  "A B=1", "X-Y=1"])
def test_train_refuses_env_names_that_are_not_shell_names(item):
    result = launch(*LOCATION, "--dry-run", "train", "--workdir", "gs://b/r", "--env", item)
    assert result.returncode == 2 and result.stdout == ""
    assert "is not an environment variable name" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --env ")


def test_env_values_reach_the_trainer_verbatim_and_run_nothing(tmp_path):
    """Values with shell syntax are exported as they are, on a simulated worker."""
    values = {"A": "x;touch INJECTED", "B": "$(touch INJECTED2)", "C": "`touch I3` 'q' \\"}
    (ssh,) = dry_run(*LOCATION, "train", "--workdir", "gs://b/r",
                     *[f"--env={k}={v}" for k, v in values.items()])
    script = remote(ssh).replace("nohup setsid", "env > \"$HOME/env\"; : ")
    home = tmp_path / "home"
    (home / "ssrl_jax").mkdir(parents=True)
    done = subprocess.run(["sh", "-c", script], env=dict(os.environ, HOME=str(home)),
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    exported = dict(line.split("=", 1) for line in (home / "env").read_text().splitlines()
                    if line[:2] in ("A=", "B=", "C="))
    assert exported == values
    assert not list(tmp_path.rglob("INJECTED*")) and not list(tmp_path.rglob("I3"))


# ------------------------------------------------------ logs, stop, delete ----

def test_logs_stop_delete():
    (logs,) = dry_run(*LOCATION, "logs")
    assert "--worker=0" in logs and "tail -n 100 -F" in remote(logs)
    (logs,) = dry_run(*LOCATION, "logs", "--worker", "all")
    assert "--worker=all" in logs
    (stop,) = dry_run(*LOCATION, "stop")
    assert "--worker=all" in stop and 'pkill -TERM -g "$pid"' in remote(stop)
    (delete,) = dry_run(*LOCATION, "delete")
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu"]
    assert delete[-2:] == ["--force", "--quiet"]
    (delete,) = dry_run(*LOCATION, "delete", "--vm")
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu"]


# -------------------------------------------------------------- multi-slice ----

def test_two_slices_are_created_together_and_every_command_reaches_both():
    create, _ = dry_run(*LOCATION, "--slices", "2", "create", "--accelerator-type", "v5p-128")
    assert create[5:8] == ["my-tpu", "--node-count=2", "--node-prefix=my-tpu"]
    assert not any(a.startswith("--node-id") for a in create)
    tar, *per_node = dry_run(*LOCATION, "--slices", "2", "setup")
    assert tar[0] == "tar"
    scp_0, scp_1 = (c for c in per_node if c[4] == "scp")
    assert (scp_0[6], scp_1[6]) == ("my-tpu-0:ssrl_jax-src.tar.gz", "my-tpu-1:ssrl_jax-src.tar.gz")
    ssh_nodes = [c[5] for c in per_node if c[4] == "ssh"]
    assert ssh_nodes == ["my-tpu-0", "my-tpu-1", "my-tpu-0", "my-tpu-1"]  # install, verify
    trains = dry_run(*LOCATION, "train", "--workdir", "gs://b/r", "--slices", "2")
    assert [t[5] for t in trains] == ["my-tpu-0", "my-tpu-1"]
    for train in trains:
        assert "--worker=all" in train
        assert remote(train).count("--config.mesh_layout.num_slices=2") == 1
    # A value the user gives is kept as it is.
    (train, _) = dry_run(*LOCATION, "train", "--workdir", "gs://b/r", "--slices", "2", "--",
                         "--config.mesh_layout.num_slices=2")
    assert remote(train).count("num_slices") == 1
    (logs,) = dry_run(*LOCATION, "--slices", "2", "logs", "--slice", "1")
    assert logs[5] == "my-tpu-1" and "--worker=0" in logs
    stops = dry_run(*LOCATION, "--slices", "2", "stop")
    assert [s[5] for s in stops] == ["my-tpu-0", "my-tpu-1"]
    (delete,) = dry_run(*LOCATION, "--slices", "2", "delete")
    assert delete[5] == "my-tpu"  # the queued resource takes its slices with it
    (train,) = dry_run(*LOCATION, "train", "--workdir", "gs://b/r", SLICES="1")
    assert "num_slices" not in remote(train)


@pytest.mark.parametrize("args, message", [
    (["--slices", "0", "stop"], "--slices"), (["--slices", "2", "logs", "--slice", "2"],
                                              "slices 0..1"),
    (["--slices", "2", "delete", "--vm"], "one slice")])
def test_slice_errors(args, message):
    result = launch(*LOCATION, "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr


# ---------------------------------------------------- options and defaults ----

def test_missing_zone_names_flag_and_env_var():
    result = launch("--dry-run", "--name", "t", "delete")
    assert result.returncode == 2
    assert "missing --zone (or set ZONE)" in result.stderr
    result = launch("--dry-run", "--zone", "z", "delete")
    assert result.returncode == 2 and "missing --name (or set TPU_NAME)" in result.stderr


def test_env_defaults_and_options_after_subcommand():
    (delete,) = dry_run("delete", TPU_NAME="env-tpu", ZONE="env-zone", PROJECT="env-proj")
    assert "env-tpu" in delete and "--zone=env-zone" in delete
    assert "--project=env-proj" in delete
    (delete,) = dry_run("delete", "--name", "flag-tpu", "--zone", "z", TPU_NAME="env-tpu")
    assert "flag-tpu" in delete and "env-tpu" not in delete


def test_passthrough_only_for_train_and_create():
    result = launch(*LOCATION, "--dry-run", "stop", "--", "--x")
    assert result.returncode == 2 and "only for train and create" in result.stderr


# ---------------------------------------------------------------- real runs ----

FAKE_GCLOUD = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "config get-value project") echo fake-proj; exit 0 ;;
  *"tpu-vm scp"*) cp "$5" "$FAKE_LOG.upload"; stat -c %a "$(dirname "$5")" > "$FAKE_LOG.mode" ;;
  *"queued-resources describe"*) echo "$FAKE_STATE" ;;
esac
exit "${FAKE_RC:-0}"
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"

    def call(*args, state="ACTIVE", rc=0):
        result = launch(*args, path=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log),
                        FAKE_STATE=state, FAKE_RC=str(rc), TMPDIR=str(tmp_path))
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls
    return call


def test_real_create_asks_gcloud_for_project_and_waits(fake_gcloud):
    result, calls = fake_gcloud(*LOCATION, "create", "--accelerator-type", "v4-8",
                                "--poll-seconds", "0")
    assert result.returncode == 0, result.stderr
    assert calls[0] == "config get-value project"
    assert calls[1].startswith("compute tpus queued-resources create my-tpu")
    assert "--project=fake-proj" in calls[1]
    assert calls[2].startswith("compute tpus queued-resources describe my-tpu")
    assert "ACTIVE" in result.stderr


def test_real_create_stops_on_failed_state_and_gcloud_errors(fake_gcloud):
    result, _ = fake_gcloud(*LOCATION, "create", "--accelerator-type", "v4-8",
                            "--poll-seconds", "0", state="FAILED")
    assert result.returncode != 0 and "FAILED" in result.stderr
    result, calls = fake_gcloud(*LOCATION, "--project", "p", "delete", rc=3)
    assert result.returncode == 3 and len(calls) == 1


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs tar")
def test_real_setup_builds_tarball_without_git(fake_gcloud, tmp_path):
    source = tmp_path / "src"
    (source / ".git").mkdir(parents=True)
    (source / ".git" / "HEAD").write_text("x")
    (source / "pyproject.toml").write_text("[project]\n")
    result, calls = fake_gcloud(*LOCATION, "--project", "p", "setup", "--source", str(source))
    assert result.returncode == 0, result.stderr
    local = calls[0].split()[4]  # a private directory of its own, removed after the upload
    assert os.path.dirname(os.path.dirname(local)) == str(tmp_path)
    assert os.path.basename(os.path.dirname(local)).startswith("ssrl_jax-src.")
    assert (tmp_path / "gcloud.log.mode").read_text().strip() == "700"
    assert not os.path.exists(os.path.dirname(local))
    assert not (tmp_path / "ssrl_jax-src.tar.gz").exists()
    tarball = tmp_path / "gcloud.log.upload"
    names = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True,
                           text=True).stdout.split()
    assert "./pyproject.toml" in names and not any(".git" in n for n in names)
    assert [c.split()[3] for c in calls] == ["scp", "ssh", "ssh"]


# ------------------------------------------------------------ remote scripts ----

def test_remote_scripts_are_valid_sh():
    env = tpu.default_env(None)
    scripts = [tpu.install_script(None, None, "3.12", tpu.LIBTPU_FIND_LINKS),
               tpu.install_script("https://x/y.git", "main", "3.12", None),
               tpu.verify_script(), tpu.train_script("c.py", "gs://b/r", ["--a=b c"], env),
               tpu.logs_script(10), tpu.stop_script(5)]
    for script in scripts:
        check = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert check.returncode == 0, (script, check.stderr)


@pytest.mark.skipif(not all(map(shutil.which, ("setsid", "pkill", "ps"))),
                    reason="needs setsid, pkill and ps")
def test_train_then_stop_on_a_simulated_worker(tmp_path):
    """The train script starts the (fake) trainer with our args; stop ends it."""
    home = tmp_path / "home"
    (home / "ssrl_jax").mkdir(parents=True)
    venv_bin = home / "ssrl_venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/args"\nexec sleep 30\n')
    (venv_bin / "python").chmod(0o755)
    env = dict(os.environ, HOME=str(home))
    train = tpu.train_script("configs/x.py", "gs://b/run 1", ["--config.a=b c"],
                             tpu.default_env(None))

    started = subprocess.run(["sh", "-c", train], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    pid = int((home / "ssrl_logs" / "train.pid").read_text())
    try:
        _check_start_refusal_args_and_stop(home, env, train, pid)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)  # only if a check failed before stop
        except (ProcessLookupError, PermissionError):
            pass


def _check_start_refusal_args_and_stop(home, env, train, pid):
    """A second start is refused; the trainer got our args; stop ends its group."""
    again = subprocess.run(["sh", "-c", train], env=env, capture_output=True, text=True)
    assert again.returncode == 1
    assert "run stop first" in again.stderr
    for _ in range(100):
        if (home / "args").exists():
            break
        time.sleep(0.02)
    assert (home / "args").read_text().splitlines() == [
        "-m", "ssrl_jax.train", "--config", "configs/x.py", "--workdir", "gs://b/run 1",
        "--config.a=b c"]

    stopped = subprocess.run(["sh", "-c", tpu.stop_script(1)], env=env, capture_output=True,
                             text=True)
    assert stopped.returncode == 0 and f"stopped pid {pid}" in stopped.stdout
    assert not (home / "ssrl_logs" / "train.pid").exists()
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True).stdout.strip()
    assert state == "" or state.startswith("Z")  # gone, or a zombie awaiting its reaper
