"""Running the real Codex CLI (npm @openai/codex) headless against a local URL.

`make test` installs the pinned CLI into .e2e-codex/; CODEX_BIN points elsewhere if it
lives there. Each run gets its own HOME holding the `~/.codex/config.toml` a user
writes for cachelayer (docs/codex.md), so `codex exec resume --last` finds the
sessions of that HOME only.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODEX = Path(os.environ.get("CODEX_BIN",
                            ROOT / ".e2e-codex" / "node_modules" / ".bin" / "codex"))
CONFIG = """\
model = "{model}"
model_provider = "cachelayer"

[model_providers.cachelayer]
name = "cachelayer"
base_url = "{url}/v1"
env_key = "CACHELAYER_API_KEY"
wire_api = "responses"
"""


def require_codex() -> None:
    """Fail (not skip) when the CLI is missing: the e2e tests are part of `make test`."""
    assert CODEX.exists(), f"Codex CLI not installed at {CODEX}: run `make test`"


def write_config(home: Path, url: str, model: str = "demo", top: str = "") -> None:
    """The ~/.codex/config.toml of docs/codex.md, pointing at `url` (`top`: more
    top-level settings)."""
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(top + CONFIG.format(url=url, model=model))


def codex(url: str, home: Path, *args: str, cwd: Path | None = None, config: str = "",
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`codex exec --skip-git-repo-check ARGS...` against `url`, in `home`."""
    write_config(home, url, top=config)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "CACHELAYER_API_KEY": "local-dummy-key", "NO_COLOR": "1"}
    workdir = cwd or home
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", *args], env=env,
                          cwd=workdir, text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
