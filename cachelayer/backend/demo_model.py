"""Build a small random-weight llama model directory, offline and deterministically.

The model is useless as a language model but real as an inference workload: it
goes through the same mlx-lm loading, chat templating, prefill and KV cache code
as a downloaded checkpoint, which is what the cache layers need to be tested
and benchmarked against. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cachelayer.fs import ensure_private_dir

logger = logging.getLogger(__name__)

MARKER_NAME = ".cachelayer-demo-model.json"
# Bump when the produced files change shape, so old directories get rebuilt.
BUILDER_VERSION = 2

SPECIAL_TOKENS = [
    "<|begin|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<tool_call>",
    "</tool_call>",
]
EOS_TOKEN = "<|end|>"
# What the demo model answers, whatever it is asked: random weights never emit
# end-of-sequence, and an agent treats an answer cut at max_tokens as an error.
DEMO_REPLY = "Hello from the demo model."
# The residual-stream dimension that marks "any prompt token", and its strength.
_MARK = 4.0
_LOGIT = 3.0

# The template puts the tools (as JSON) at the very top of the system area, so
# a change of tools changes the prompt prefix, as it does with real models.
# "<tool_call>" and "tool_call.name" make mlx-lm pick its json_tools parser.
CHAT_TEMPLATE = """{{- '<|begin|>' -}}
{%- if tools %}
{{- '<|system|>\\n# Tools\\nYou may call these functions:\\n' }}
{{- tools | tojson }}
{{- '\\nTo call one, answer <tool_call>{"name": ..., "arguments": {...}}' }}
{{- '</tool_call>\\n<|end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message['content'] is string %}
{%- set content = message['content'] %}
{%- elif message['content'] is none %}
{%- set content = '' %}
{%- else %}
{%- set content = message['content'] | map(attribute='text') | join('') %}
{%- endif %}
{%- if message['role'] == 'tool' %}
{{- '<|tool|>\\n' + content + '\\n<|end|>\\n' }}
{%- else %}
{{- '<|' + message['role'] + '|>\\n' + content }}
{%- if message['tool_calls'] is defined and message['tool_calls'] %}
{%- for call in message['tool_calls'] %}
{%- set tool_call = call['function'] if call['function'] is defined else call %}
{{- '<tool_call>{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}
{{- tool_call.arguments }}
{%- else %}
{{- tool_call.arguments | tojson }}
{%- endif %}
{{- '}</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '\\n<|end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|assistant|>\\n' }}
{%- endif %}"""

# Training text for the tokenizer. It lives here rather than being read from
# the standard library because stdlib files differ between Python versions,
# and the tokenizer (hence every token id and every cache key) must not.
_CORPUS_SEED = """\
The cache sits between the client and the model server. Every turn of a coding
agent sends the same long system prompt and the same tool definitions again,
followed by a short new message from the user. Without reuse the server
recomputes the attention keys and values of the whole prompt on every turn.
With a prefix cache it computes them once, keeps them in memory or on disk, and
later only processes the few tokens that changed. Time to first token drops
from tens of seconds to a fraction of a second.

You are a helpful assistant. Answer the question of the user briefly and
precisely. When a tool would help, call it with valid JSON arguments. Read the
file before you edit it. Run the tests after every change. Never guess a path.

def fetch_nearest_cache(model, tokens):
    result = trie.search(model, tokens)
    if result.exact is not None:
        return copy.deepcopy(result.value), []
    return None, tokens

class PromptStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def insert_cache(self, tokens: list[int], prompt_cache: list) -> None:
        for layer in prompt_cache:
            total += layer.nbytes

{"type": "function", "function": {"name": "read_file", "description": "Read a
file from the working directory and return its content.", "parameters":
{"type": "object", "properties": {"path": {"type": "string"}, "offset":
{"type": "integer"}, "limit": {"type": "integer"}}, "required": ["path"]}}}

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor
jugs. How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 4096 16384 65536.
Punctuation: ( ) [ ] { } < > = + - * / % ! ? . , ; : ' " ` ~ @ # $ ^ & | _ \\
Error: file not found. Warning: the index is stale. Info: 12 files, 3.4 MiB.
GET /v1/models HTTP/1.1  POST /v1/chat/completions  200 OK  404 Not Found
"""

_WORD_TEXT = (
    "system user assistant tool message content function arguments name type "
    "string integer boolean array object required description properties path "
    "file line edit write read search grep glob bash command output error test "
    "cache prefix token prompt model server request response stream usage "
    "memory disk index eviction fingerprint layer trim load save insert fetch "
    "python rust javascript import return class def self async await yield"
)
_WORDS = _WORD_TEXT.split()


def _corpus() -> list[str]:
    """Deterministic training text: the seed text plus word and number mixes."""
    lines = _CORPUS_SEED.splitlines()
    # A fixed linear congruential walk instead of `random`: its output is the
    # same on every Python version by construction.
    state = 12345
    for _ in range(600):
        words = []
        for _ in range(12):
            state = (state * 1103515245 + 12345) % (1 << 31)
            words.append(_WORDS[state % len(_WORDS)])
        state = (state * 1103515245 + 12345) % (1 << 31)
        words.append(str(state % 10000))
        lines.append(" ".join(words))
    return lines


def train_tokenizer(vocab_size: int) -> Any:
    """Train the demo tokenizer (byte-level BPE on the embedded corpus); the test models
    in tests/support share it, so every model tokenizes a prompt the same way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _params(
    hidden_size: int, num_layers: int, num_heads: int, vocab_size: int, seed: int
) -> dict[str, int]:
    """The parameters that identify a build (stored in the marker file)."""
    return {
        "builder_version": BUILDER_VERSION,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "vocab_size": vocab_size,
        "seed": seed,
    }


def is_complete(path: Path, params: dict[str, int]) -> bool:
    """True when `path` holds a finished build made with exactly `params`."""
    try:
        return bool(json.loads((path / MARKER_NAME).read_text()) == params)
    except (OSError, ValueError):
        return False


def reply_token_ids(tokenizer: Any) -> list[int]:
    """The demo reply's token ids, without repeats (each needs its own chain link)."""
    ids: list[int] = []
    for token_id in tokenizer.encode(DEMO_REPLY).ids:
        if token_id in ids:
            break
        ids.append(token_id)
    return ids


def _wire_reply(weights: dict[str, Any], tokenizer: Any, eos_id: int, layers: int) -> None:
    """Make greedy and sampled decoding alike answer DEMO_REPLY and then stop.

    Every embedding carries a strong mark on dimension 0, except the reply's tokens, which
    carry one on dimensions 1..k; lm_head maps mark 0 to the first reply token, mark j to
    token j+1 and mark k to end-of-sequence. The layers still run at full cost on random
    weights (prefill timing is unchanged); their outputs are damped so the marks dominate.
    """
    import mlx.core as mx

    chain = reply_token_ids(tokenizer)
    embed = weights["model.embed_tokens.weight"]
    head = weights["lm_head.weight"]
    hidden = embed.shape[1]
    if len(chain) + 1 > hidden:
        chain = chain[: hidden - 1]
    marks = mx.zeros((embed.shape[0],), dtype=mx.int32)
    marks[mx.array(chain)] = mx.arange(1, len(chain) + 1, dtype=mx.int32)
    embed = embed + _MARK * (mx.arange(hidden)[None, :] == marks[:, None])
    targets = [*chain, eos_id]
    rows = mx.zeros(head.shape)
    for mark, target in enumerate(targets):
        rows[target, mark] = _LOGIT
    weights["model.embed_tokens.weight"] = embed
    weights["lm_head.weight"] = head + rows
    for i in range(layers):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            key = f"model.layers.{i}.{name}.weight"
            weights[key] = weights[key] * 0.1


def _write_model(out: Path, params: dict[str, int]) -> None:
    """Write config, random weights and tokenizer files into `out`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    tokenizer = train_tokenizer(params["vocab_size"])
    # The model's vocab must cover every token id the tokenizer can produce.
    vocab_size = max(params["vocab_size"], tokenizer.get_vocab_size())
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    hidden = params["hidden_size"]
    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": params["num_layers"],
        "intermediate_size": hidden * 4,
        "num_attention_heads": params["num_heads"],
        "num_key_value_heads": params["num_heads"],
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": 131072,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": eos_id,
        "bos_token_id": tokenizer.token_to_id("<|begin|>"),
        "torch_dtype": "float32",
    }
    mx.random.seed(params["seed"])
    args = llama.ModelArgs.from_dict(config)
    model = llama.Model(args)
    weights = dict(tree_flatten(model.parameters()))
    _wire_reply(weights, tokenizer, eos_id, params["num_layers"])
    save_model_files(out, weights, config, tokenizer)


def save_model_files(out: Path, weights: dict[str, Any], config: dict[str, Any],
                     tokenizer: Any) -> None:
    """Write a loadable mlx-lm model directory: weights, config, tokenizer and template."""
    import mlx.core as mx

    mx.eval(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights, {"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin|>",
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|begin|>", "eos_token": EOS_TOKEN}, indent=2)
    )


# The demo model's shape; build_demo_model's defaults and is_built read it.
DEFAULT_SHAPE = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "vocab_size": 2048,
                 "seed": 0}


def is_built(path: Path) -> bool:
    """True when `path` already holds the default demo model (nothing to prepare); cheap,
    and without mlx, so the proxy can ask before it starts a builder."""
    return is_complete(path, _params(**DEFAULT_SHAPE))


def build_demo_model(
    path: Path,
    *,
    hidden_size: int = DEFAULT_SHAPE["hidden_size"],
    num_layers: int = DEFAULT_SHAPE["num_layers"],
    num_heads: int = DEFAULT_SHAPE["num_heads"],
    vocab_size: int = DEFAULT_SHAPE["vocab_size"],
    seed: int = DEFAULT_SHAPE["seed"],
) -> Path:
    """Build (or reuse) a random-weight llama model directory at `path`."""
    path = Path(path)
    params = _params(hidden_size, num_layers, num_heads, vocab_size, seed)
    if is_complete(path, params):
        return path
    ensure_private_dir(path.parent)
    # Build next to the target so the final rename stays on one file system.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_model(tmp, params)
        # The marker goes last: a directory without it is a half-built one.
        (tmp / MARKER_NAME).write_text(json.dumps(params))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another builder won the race; its result is as good as ours.
            if not is_complete(path, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built demo model at %s (%s)", path, params)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m cachelayer.backend.demo_model DIR`: build the demo model (the embedded
    backend runs this in a child process, so the proxy itself never imports mlx)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cachelayer.backend.demo_model DIR", file=sys.stderr)
        return 2
    build_demo_model(Path(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
