"""Configuration of the proxy."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from candela_proxy.targets import AllowList
from candela_runtime.config import env_field


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """Settings of the proxy (CANDELA_* variables)."""

    service_token: str = env_field("Shared secret that authenticates internal calls between services.")
    auth_addr: str = env_field("host:port of the auth service, which resolves Candela keys.")
    ingest_addr: str = env_field("host:port of the ingest service, which receives the logs.")
    prompts_addr: str = env_field(
        "host:port of the prompts service, which renders named prompts; empty: a named prompt gets 503.", ""
    )
    prompts_timeout_s: float = env_field("Seconds the prompts service gets to render a named prompt.", 2.0)
    target_hosts: str = env_field(
        "Comma-separated hosts that Candela-Target-Url and Candela-Fallbacks may reach even though they resolve"
        " to non-public addresses (a local vLLM or Ollama): 'host' (any port), 'host:port', '*.example.com' (a"
        " domain and its subdomains), '[::1]:8000'. Empty: only hosts whose every address is public. Cloud"
        " metadata addresses are never reached.",
        "",
    )
    target_hosts_only: bool = env_field(
        "true: Candela-Target-Url and Candela-Fallbacks may reach only the CANDELA_TARGET_HOSTS entries, public"
        " hosts included (and nothing when the list is empty); false: any public host as well.",
        False,
    )
    http_host: str = env_field("Address the HTTP server binds.", "127.0.0.1")
    http_port: int = env_field("Port the HTTP server binds.", 8080)
    proxy_workers: int = env_field(
        "Proxy processes serving the port (a supervisor starts them, restarts one that dies, and stops them in"
        " order: see candela_proxy.supervisor); each keeps its own log queue, spool and write-ahead log. 0: one"
        " per core (capped by the container's CPU limit); 1: a single process, no supervisor.",
        0,
    )
    openai_base_url: str = env_field(
        "OpenAI API base URL, with its /v1, as the OpenAI SDK takes it.", "https://api.openai.com/v1"
    )
    anthropic_base_url: str = env_field("Anthropic API base URL, without /v1.", "https://api.anthropic.com")
    bedrock_base_url: str = env_field(
        "AWS Bedrock Runtime base URL; {region} is replaced by the request's region.",
        "https://bedrock-runtime.{region}.amazonaws.com",
    )
    bedrock_region: str = env_field(
        "AWS region of a Bedrock request that names none (in its path, Candela-Aws-Region or its signature).",
        "us-east-1",
    )
    gemini_base_url: str = env_field(
        "Gemini API base URL, without its version: /gemini/v1beta/... goes to it + /v1beta/....",
        "https://generativelanguage.googleapis.com",
    )
    vertex_base_url: str = env_field(
        "Vertex AI base URL, without its version, for every location; empty: each call goes to its location's"
        " endpoint, https://{location}-aiplatform.googleapis.com (https://aiplatform.googleapis.com for global).",
        "",
    )
    # Azure OpenAI and the OpenAI-compatible family (candela_proxy.azure, candela_proxy.compatible).
    azure_base_url: str = env_field(
        "Azure OpenAI resource endpoint for /azure/openai/... (https://<resource>.openai.azure.com, no path);"
        " empty: each request names its resource in Candela-OpenAI-Api-Base (or Helicone-OpenAI-Api-Base).",
        "",
    )
    azure_deployments: str = env_field(
        "Azure deployment -> model, 'deployment=model,...' (prod-chat=gpt-4o): the model a deployment is logged"
        " and priced as when its answer does not name one.",
        "",
    )
    groq_base_url: str = env_field(
        "Groq's OpenAI-compatible base URL, for /groq/v1/...", "https://api.groq.com/openai/v1"
    )
    mistral_base_url: str = env_field("Mistral's base URL, for /mistral/v1/...", "https://api.mistral.ai/v1")
    deepseek_base_url: str = env_field("DeepSeek's base URL, for /deepseek/v1/...", "https://api.deepseek.com/v1")
    xai_base_url: str = env_field("xAI's base URL, for /xai/v1/...", "https://api.x.ai/v1")
    together_base_url: str = env_field("Together AI's base URL, for /together/v1/...", "https://api.together.xyz/v1")
    fireworks_base_url: str = env_field(
        "Fireworks AI's base URL, for /fireworks/v1/...", "https://api.fireworks.ai/inference/v1"
    )
    openrouter_base_url: str = env_field(
        "OpenRouter's base URL, for /openrouter/v1/...", "https://openrouter.ai/api/v1"
    )
    perplexity_base_url: str = env_field("Perplexity's base URL, for /perplexity/v1/...", "https://api.perplexity.ai")
    cerebras_base_url: str = env_field("Cerebras' base URL, for /cerebras/v1/...", "https://api.cerebras.ai/v1")
    vllm_base_url: str = env_field(
        "A vLLM server's OpenAI-compatible base URL (http://127.0.0.1:8000/v1), for /vllm/v1/...; empty: no /vllm.", ""
    )
    ollama_base_url: str = env_field(
        "An Ollama server's OpenAI-compatible base URL (http://127.0.0.1:11434/v1), for /ollama/v1/...; empty: no"
        " /ollama.",
        "",
    )
    log_binary_body_max_bytes: int = env_field(
        "Largest binary body (multipart upload, audio, image, file) a log keeps; a larger one is logged as a"
        " one-line marker with its content type and size. JSON and text bodies are always kept whole.",
        1 << 20,
    )
    max_body_bytes: int = env_field("Largest request body accepted (larger gets 413).", 32 * 1024 * 1024)
    upstream_connect_timeout_s: float = env_field("Seconds to connect to a provider.", 10.0)
    upstream_read_timeout_s: float = env_field("Seconds a provider may stay silent mid-response.", 600.0)
    auth_cache_ttl_s: float = env_field("Seconds a key lookup is cached (revocations apply within this).", 5.0)
    pricing_wait_s: float = env_field(
        "Longest a finished request's log waits for its organization's pricing (fetched from AuthService since"
        " the request was admitted, when not cached) before it is logged unpriced. The client's answer ends"
        " once its log is durable, so this bounds what a slow AuthService adds to an answer.",
        1.0,
    )
    log_queue_size: int = env_field("Finished logs held in memory awaiting ingest.", 50_000)
    log_batch_size: int = env_field("Most logs sent to ingest per call.", 500)
    log_batch_max_bytes: int = env_field("A batch stops growing at this many bytes (bodies included).", 8 * 1024 * 1024)
    log_flush_interval_s: float = env_field("Longest a log waits in memory before a batch is sent.", 0.2)
    spool_dir: Path = env_field("Directory for logs awaiting ingest when it is down.", Path(".candela/spool"))
    spool_max_bytes: int = env_field("Largest the on-disk spool may grow; past it logs are dropped (counted).", 1 << 30)
    ingest_timeout_s: float = env_field(
        "Seconds ingest gets to acknowledge a batch before the batch goes to the spool instead.", 5.0
    )
    wal: bool = env_field(
        "Write each finished log to a local write-ahead log (group-committed fsync) before the client sees the"
        " end of its answer, so a killed proxy loses no log it answered for. Off: a SIGKILL loses the logs"
        " still in memory.",
        True,
    )
    wal_dir: str = env_field("Directory of the write-ahead log; empty: 'wal' inside the spool directory.", "")
    wal_commit_interval_s: float = env_field(
        "Least seconds between two write-ahead log fsyncs (every log written meanwhile shares the next one);"
        " 0: the next starts as soon as the last ended.",
        0.0,
    )
    refuse_when_log_full: bool = env_field(
        "Answer new requests 503 (in the provider's error shape) while a log could not be kept (the spool is"
        " full with ingest away, or the write-ahead log fails), holding the logs already answered for until"
        " there is room. Off: requests go on and logs that do not fit are dropped (counted, and /healthz"
        " reports it).",
        False,
    )
    redis_url: str = env_field("Redis URL for the cache and rate limits.", "redis://127.0.0.1:6379/0")
    redis_timeout_s: float = env_field("Seconds a Redis call may take before the cache is skipped.", 0.25)
    log_level: str = env_field("Logging level (DEBUG, INFO, WARNING, ERROR).", "INFO")
    shutdown_grace_s: float = env_field("Seconds in-flight requests get to finish on SIGTERM.", 10.0)

    @functools.cached_property
    def target_allow_list(self) -> AllowList:
        """``target_hosts`` and ``target_hosts_only`` parsed; raises ValueError on a malformed entry."""
        return AllowList.parse(self.target_hosts, only=self.target_hosts_only)

    @functools.cached_property
    def wal_path(self) -> Path | None:
        """Where the write-ahead log lives; None when it is off."""
        if not self.wal:
            return None
        return Path(self.wal_dir) if self.wal_dir else self.spool_dir / "wal"
