"""Gateway configuration: a TOML/YAML file, then ``FORGE_*`` env vars, then CLI flags.

Every section is a msgspec Struct that rejects unknown keys, so a typo in the file is an error
naming the key, not a silently ignored setting. The layering rules are the SDK's
(:mod:`forge_sdk.config`), shared with ``forge-train``. Env vars use ``FORGE_<SECTION>_<FIELD>`` for
nested fields (``FORGE_LIMITS_MAX_CONCURRENT=64``) and ``FORGE_<FIELD>`` for top-level ones
(``FORGE_MODEL=./tiny``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from forge_sdk.config import env_layer, load_layered
from forge_sdk.errors import ConfigurationError

__all__ = [
    "ApiConfig",
    "AuthConfig",
    "EngineConfig",
    "GatewayConfig",
    "LimitsConfig",
    "RateLimitConfig",
    "RouterConfig",
    "load_auth_config",
    "load_config",
]

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(ge=1)]


class EngineConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The in-process inference engine for the base model."""

    kind: Literal["auto", "vllm", "transformers"] = "auto"
    """``auto`` uses vLLM when importable, else the transformers fallback."""
    max_model_len: Positive | None = None
    """Context length (default: the model's own, capped at 4096 for vLLM)."""
    enable_lora: bool | Literal["auto"] = "auto"
    """Serve LoRA adapter experts on the base model. ``auto``: vLLM on CPU gets LoRA once adapter
    experts exist (registry file or plugins), so a gateway without adapters runs at the speed of a
    plain engine (vLLM's CPU build cannot compile a LoRA model); the first adapter registered while
    it runs swaps in a LoRA engine in the background (requests for it wait; the rest are served
    throughout). vLLM on GPU and the transformers engine have LoRA on from the start (it costs
    them little). ``true``: LoRA from the start. ``false`` (``--no-lora``): adapters are not served."""
    max_loras: Positive = 4
    """Adapters resident at once in one batch (vLLM ``max_loras``)."""
    max_lora_rank: Positive = 16
    """Largest adapter rank accepted."""
    dtype: str = "auto"
    """Weights and compute dtype (``auto``, ``float16``, ``bfloat16``, ``float32``). ``auto``:
    float32 on CPU for both engines (vLLM's own CPU choice, bfloat16, changed greedy answers:
    docs/serving.md, "Engine defaults"; quantized checkpoints keep vLLM's choice), on GPU the checkpoint's
    dtype (transformers) or vLLM's choice. ``forge-gateway check`` tests any setting on a model."""
    quantization: str | None = None
    """Quantization of the base model checkpoint (``awq``, ``gptq``, ``compressed-tensors``...)."""
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1)] = 0.9
    """Fraction of GPU memory vLLM may take."""
    max_batch_size: Positive = 32
    """Most sequences per step: the transformers engine's batch, and vLLM's ``max_num_seqs``."""
    tensor_parallel_size: Positive = 1
    """vLLM: GPUs each model's layers are split across (``tensor_parallel_size``); 1 on CPU."""
    pipeline_parallel_size: Positive = 1
    """vLLM: pipeline stages (groups of layers on different GPUs or nodes); 1 on CPU."""
    data_parallel_size: Positive = 1
    """vLLM: full copies of the engine, each on ``tensor x pipeline`` GPUs, sharing the batch."""
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    """vLLM's worker launcher when the engine spans several GPUs: ``mp`` (processes on this
    machine) or ``ray`` (a Ray cluster, for several nodes); None lets vLLM choose."""
    enforce_eager: bool | None = None
    """vLLM: run the model eagerly, without ``torch.compile`` and CUDA graphs (faster start-up,
    slower generation). None: vLLM's default, compiled; the compiled artefacts are cached under
    ``VLLM_CACHE_ROOT`` (``~/.cache/vllm``). vLLM's CPU build runs eagerly whenever LoRA is on."""
    enable_prefix_caching: bool | None = None
    """vLLM: reuse the KV cache of shared prompt prefixes (None: vLLM's default, on in V1)."""
    standalone_start: Literal["lazy", "startup"] = "lazy"
    """When the engines of standalone (merged / quantized) experts start: on each one's first
    request (no memory held for idle experts) or with the gateway (no first-request delay)."""
    max_standalone_engines: Positive = 4
    """Most standalone expert engines running at once; one more stops the least recently used
    idle one (a key cannot make the gateway load every registered checkpoint)."""
    standalone_gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1)] = 0.2
    """Fraction of GPU memory each standalone expert's vLLM engine may take (the base engine's
    ``gpu_memory_utilization`` plus these must stay below 1 on a shared GPU)."""


class RouterConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How ``model: "auto"`` picks an expert."""

    classifier: str = "neural"
    """Registered classifier name (``keyword``, ``neural``, ``hybrid``, or a plugin's). ``neural``,
    the trained router alone, scored best on the held-out proxy; ``hybrid`` adds keywords as a prior."""
    default_expert: str = "general"
    """Expert used when the classifier is unsure or the chosen expert is unavailable."""
    options: dict[str, Any] = field(default_factory=dict)
    """Classifier-specific options (e.g. ``threshold``, ``model_dir``)."""
    retry_base_delay: Annotated[float, Meta(ge=0)] = 1.0
    """First backoff delay before retrying a remote expert, seconds (SDD §9.3); doubles per retry."""
    failure_threshold: Positive = 3
    """Consecutive failed requests after which a remote expert cools down."""
    cooldown_s: Annotated[float, Meta(ge=0)] = 30.0
    """How long a failing remote expert is skipped (its requests fall back), seconds."""
    health_check_interval: Annotated[float, Meta(ge=0)] = 2.0
    """Seconds between probes (``GET <endpoint>/models``) of remote replicas in cooldown; one
    that answers gets traffic again at once instead of after ``cooldown_s`` (0: no probes)."""
    upstream_key_env_prefix: Annotated[str, Meta(min_length=1)] = "FORGE_UPSTREAM_KEY_"
    """A remote expert's ``api_key_env`` must start with this prefix, so an admin cannot make
    the gateway send an unrelated secret (``AWS_SECRET_ACCESS_KEY``) to an endpoint."""
    upstream_allow_hosts: list[str] = field(default_factory=list)
    """Hosts remote expert endpoints may name (empty: any host except link-local and cloud
    metadata addresses). Entries are exact host names or IP addresses."""
    upstream_allow_link_local: bool = False
    """Allow endpoints on link-local / cloud-metadata addresses (169.254.0.0/16, fe80::/10,
    fd00:ec2::254); off by default because they hand out cloud credentials."""


class LimitsConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Input and capacity limits (SDD §10.2, §11.3)."""

    max_body_bytes: Positive = 4 * 1024 * 1024
    """Largest request body accepted (413 above)."""
    max_messages: Positive = 256
    """Most messages in one chat request."""
    max_tokens: Positive = 4096
    """Upper bound for ``max_tokens`` (SDD: 4096)."""
    default_max_tokens: Positive = 512
    """``max_tokens`` when the request gives none (still capped by the context left)."""
    max_concurrent: Positive = 100
    """Requests generating at once (SDD: 100); more wait in the queue."""
    max_queue: Annotated[int, Meta(ge=0)] = 200
    """Requests allowed to wait for a slot; beyond that: 503."""
    request_timeout: Annotated[float, Meta(gt=0)] = 60.0
    """Seconds a non-streaming request may take (SDD: 60); 504 after."""
    queue_timeout: Annotated[float, Meta(gt=0)] = 30.0
    """Seconds a request may wait in the admission queue before a 503 ``overloaded``."""
    shutdown_grace: Annotated[float, Meta(ge=0)] = 30.0
    """On SIGTERM, seconds in-flight requests (streams too) may take to finish before they are cut."""
    body_timeout: Annotated[float, Meta(gt=0)] = 30.0
    """Seconds a client may take to send a generation request's whole body (408 after); the
    concurrency slot is only taken once the body is in, so slow uploads cannot hold slots."""


class ApiConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """How the OpenAI-compatible API treats what clients send."""

    unknown_fields: Literal["reject", "ignore"] = "reject"
    """Top-level request fields outside the OpenAI API (and vLLM's extensions): a 400 naming the
    field (``reject``), or dropped silently (``ignore``, for clients that send vendor fields)."""
    tool_parser: str = "auto"
    """Tool-call parser for ``tool_choice: "auto"`` (a registered name such as ``hermes`` or
    ``llama3_json``); ``auto`` picks it from the model's chat template, else ``hermes``."""
    list_aliases: bool = False
    """List base-model aliases in ``/v1/models``: experts with no weights of their own, such as
    the built-in ``general``/``code``/``math``/``writing`` or the example plugin's ``mathexpert``.
    Off: ``/v1/models`` shows the base model, experts with weights of their own and ``auto``,
    since every alias answers exactly as the base model; aliases still answer when named."""


class AuthConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """API keys (``forge-gateway keys ...``). With no active key *at start-up* the gateway is open
    (dev mode) on a loopback host; on any other host it refuses to start unless ``allow_open``.
    Open mode is decided at start-up only: once any key exists it ends, and revoking the last key
    never reopens a running gateway (restart it to serve openly again)."""

    db_path: str = "forge-gateway.db"
    """SQLite file holding hashed keys and the usage ledger (shared by replicas on one host)."""
    database_url: str | None = None
    """PostgreSQL URL (``postgresql://user:password@host:5432/db``) for keys and usage, shared by
    replicas on any host; unset: the SQLite file ``db_path``. Tables are created and upgraded by
    versioned migrations when a gateway or ``forge-gateway keys`` first connects."""
    database_pool_size: Positive = 4
    """Most PostgreSQL connections one process holds (key refresh, usage flushes, admin calls)."""
    database_timeout: Annotated[float, Meta(gt=0)] = 5.0
    """Seconds one PostgreSQL call may take, waiting for a pooled connection included, before the
    store counts as down (keyed requests then get 503 ``key_store_unavailable`` until it answers
    again). Enforced by the gateway itself, so it holds even when the server stops answering
    without closing the connection; also the connect timeout, and half the server-side
    ``statement_timeout``."""
    allow_open: bool = False
    """Serve without keys even on a non-loopback address (admin routes stay closed there)."""
    public_metrics: bool = False
    """Serve ``/metrics`` without a key (default: it needs an admin key, as Prometheus bearer auth)."""
    refresh_interval: Annotated[float, Meta(gt=0)] = 1.0
    """Seconds between checks for keys created/revoked by other processes (revocation delay)."""
    usage_flush_interval: Annotated[float, Meta(gt=0)] = 1.0
    """Seconds between batched writes of the usage ledger (all pending usage is written at shutdown).
    A crash that skips shutdown (SIGKILL, power loss) loses at most this long's usage, or
    ``usage_flush_max_requests`` requests' if fewer (see ``security/ledger.py``)."""
    usage_flush_max_requests: Annotated[int, Meta(ge=1)] = 500
    """Write the usage ledger early once this many requests' usage is waiting: bounds what a crash
    loses under heavy traffic too."""


class RateLimitConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-key rate limits (GCRA: a key may burst its whole minute, then refills steadily)."""

    backend: Literal["memory", "redis"] = "memory"
    """``redis`` shares limits across gateway replicas."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL for the ``redis`` backend (its password never appears in errors or logs)."""
    redis_timeout: Annotated[float, Meta(gt=0, le=10)] = 1.0
    """Seconds one Redis call may take (connect included, no client retries): a partitioned
    Redis fails requests closed (503 ``rate_limiter_unavailable``) after this, never hangs them."""
    default_rpm: Annotated[int, Meta(ge=0)] = 0
    """Requests per minute for keys created without ``--rpm`` (0: unlimited)."""
    default_tpm: Annotated[int, Meta(ge=0)] = 0
    """Prompt + completion tokens per minute for keys without ``--tpm`` (0: unlimited)."""


class GatewayConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything ``forge-gateway serve`` needs."""

    model: str = ""
    """Base model: a local folder or a hub id (required)."""
    served_model_name: str | None = None
    """Name clients use for the base model (default: the folder name or hub id)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port = 8000
    """Port to listen on (0: pick a free one)."""
    registry: str | None = None
    """Expert registry JSON file (watched for changes; default: none, only plugin experts)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""
    log_json: bool = True
    """Structured JSON logs (False: human-readable console lines)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    @property
    def model_name(self) -> str:
        """The name the base model is served under."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model).expanduser()
        if path.exists() or self.model.startswith((".", "/", "~")):
            return path.resolve().name if path.exists() else path.name
        return self.model  # a hub id like Qwen/Qwen2.5-0.5B-Instruct is served under its full id


_SECTIONS = {"engine", "router", "limits", "auth", "rate_limit", "api"}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``FORGE_X`` / ``FORGE_SECTION_X`` env vars as a nested dict."""
    return env_layer(environ, "FORGE_", GatewayConfig.__struct_fields__, _SECTIONS)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> GatewayConfig:
    """Build the config from a file, then env vars, then ``overrides`` (CLI flags).

    Args:
        path: TOML or YAML file, or None.
        overrides: nested dict of values that win over file and env (None values are ignored).
        environ: environment to read (default ``os.environ``).

    Raises:
        ConfigurationError: unreadable file, unknown key, or a value of the wrong type/range;
            the message names the offending key.
    """
    env = _env_overrides(dict(os.environ if environ is None else environ))
    config = load_layered(GatewayConfig, file=path, env=env, overrides=overrides)
    if not config.model:
        raise ConfigurationError(
            "no model given: pass --model, set FORGE_MODEL, or put model = ... in the config file"
        )
    return config


def load_auth_config(environ: dict[str, str] | None = None) -> AuthConfig:
    """The ``[auth]`` section from ``FORGE_AUTH_*`` env vars alone (``forge-gateway keys`` needs no model).

    Raises:
        ConfigurationError: a value of the wrong type/range, naming the key.
    """
    data = _env_overrides(dict(os.environ if environ is None else environ)).get("auth", {})
    return load_layered(AuthConfig, env=data)
