"""LiteLLM's proxy with its disk cache, in its own virtualenv, as the store benchmark's peer.

The virtualenv lives in `.bench/litellm-venv` (ignored by git) and is created on first
use with the ordinary pip client. LiteLLM is configured with the fake upstream as an
OpenAI-compatible model and `cache: true` with a disk cache. Anything that fails here
is raised as LiteLLMUnavailable with the real error, and the benchmark records it.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from benchlib.procs import REPO

VENV = REPO / ".bench" / "litellm-venv"
PACKAGES = ["litellm[proxy]", "diskcache"]
MODEL_NAME = "bench-model"
# LiteLLM fetches a price list from GitHub at start-up; there is no network here and the
# retries cost seconds, so use the copy it ships.
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
       "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True"}


class LiteLLMUnavailable(RuntimeError):
    """LiteLLM could not be installed or started here."""


def executable() -> Path:
    """The `litellm` command of the benchmark's own virtualenv."""
    return VENV / "bin" / "litellm"


def ensure_installed(timeout_s: float = 900.0) -> str:
    """Create the virtualenv and install LiteLLM once; returns the installed version."""
    python = VENV / "bin" / "python"
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                           capture_output=True, timeout=120)
        if not executable().exists():
            subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True,
                           capture_output=True, timeout=timeout_s)
        done = subprocess.run([str(python), "-c",
                               "import importlib.metadata as m; print(m.version('litellm'))"],
                              check=True, capture_output=True, text=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"")
        text = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
        raise LiteLLMUnavailable(f"installing {PACKAGES} failed: {text[-1500:]}") from exc
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise LiteLLMUnavailable(f"installing {PACKAGES} failed: {exc}") from exc
    return done.stdout.strip()


def write_config(path: Path, upstream: str, cache_dir: Path) -> Path:
    """A config.yaml: one openai-compatible model at `upstream`, disk cache on.

    LiteLLM 1.106 neither looks up nor stores requests with more than 4 messages by
    default (`max_messages`), which is every agent turn past the second; the limit is
    lifted so the benchmark measures its hit path at all (and the report says so).
    """
    path.write_text(f"""model_list:
  - model_name: {MODEL_NAME}
    litellm_params:
      model: openai/fake-model
      api_base: {upstream}/v1
      api_key: not-needed
litellm_settings:
  cache: true
  cache_params:
    type: disk
    disk_cache_dir: {cache_dir}
    max_messages: null
  telemetry: false
""")
    return path


def master_key() -> str:
    """A throw-away key for one run: LiteLLM refuses to start without one."""
    return "sk-bench-" + secrets.token_hex(32)


def argv(port: int, config: Path) -> list[str]:
    """The proxy's command line: one worker, loopback only."""
    return [str(executable()), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
