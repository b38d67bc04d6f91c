"""Settings: YAML or a dict -> validated, typed settings with a default for every value.

The seed's `worker:` block loads unchanged. Precedence (applied by the CLI): command-line
flag, then environment variable, then config file, then the defaults written here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctxbatch.errors import ConfigError

PRIORITY_MIN, PRIORITY_MAX = 0, 100
# A record's priority when neither it nor its submission gives one.
DEFAULT_PRIORITY = 50
DEFAULT_QUEUE = "default"
MAX_TENANT_LENGTH = 64
# Defaults the settings and the store's method arguments share.
LEASE_SECONDS = 300
# How long an idempotency key's first answer is replayed to a retry with that key (Stripe keeps 24 h).
IDEMPOTENCY_HOURS = 24.0
STATS_WINDOW_SECONDS = 300
OUTAGE_SECONDS = 120
# A dynamic sizer starts from what a run of the same engine, queues and setup learned at most this long
# ago (`worker.sizing_history`); older history is ignored: the engine or the service behind it may
# have changed, and a search from `batch_size` costs a few thousand contexts at most.
SIZING_HISTORY_DAYS = 7
# The named priority levels unless `worker.priorities.levels` says otherwise; they cover 0..100 once.
DEFAULT_LEVELS = {"high": "0-10", "medium": "11-50", "low": "51-100"}

# An async engine's calls in flight without a worker to learn a limit (a partition run in a notebook):
# a waiting call costs almost nothing, and most services serve tens of calls at once.
ENGINE_CONCURRENCY = 64
# The worker settings that size batches; a config that sets none leaves the size to the loop.
BATCH_SIZE_KEYS = ("batch_size", "min_batch_size", "max_batch_size")


class _Section(BaseModel):
    # Unknown keys are refused so a typo never silently falls back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetrySettings(_Section):
    batch_retries: int = Field(3, ge=0, description="Times a batch stopped by a critical error is retried.")
    backoff_seconds: list[float] = Field(
        [5, 15, 30], min_length=1, description="Wait before retry i (the last value repeats)."
    )
    context_retries: int = Field(3, ge=0, description="Retries of one failed context before it is failed for good.")
    max_deferrals: int = Field(
        20, ge=0, description="Times one context may be deferred by RetryLater before it is failed for good."
    )

    @field_validator("backoff_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("backoff periods must be >= 0")
        return value

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the given (1-based) failed attempt: period i after the i-th; the last repeats."""
        periods = self.backoff_seconds
        return periods[min(max(attempt, 1), len(periods)) - 1]


def parse_level(text: str | int) -> tuple[int, int]:
    """'0-10' -> (0, 10); '7' -> (7, 7)."""
    low, _, high = str(text).partition("-")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{text!r} is not a range like '0-10'") from None
    if not PRIORITY_MIN <= bounds[0] <= bounds[1] <= PRIORITY_MAX:
        raise ValueError(f"{text!r} must be a range within {PRIORITY_MIN}..{PRIORITY_MAX}")
    return bounds


def level_ranges(levels: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{"high": "0-10"} -> {"high": (0, 10)}."""
    return {name: parse_level(text) for name, text in levels.items()}


def _span(low: int, high: int) -> str:
    return f"priority {low} does not" if low == high else f"priorities {low}-{high} do not"


class PrioritySettings(_Section):
    enabled: bool = Field(True, description="Claim the most urgent (lowest) priority first; else oldest first.")
    levels: dict[str, str] = Field(
        DEFAULT_LEVELS,
        description="Named priority ranges; together they cover 0..100 exactly once.",
    )
    aging_seconds: float | None = Field(
        None,
        ge=0,
        description="Each this many seconds of waiting makes a context one priority more urgent (0: oldest first); "
        "None: strict priority. The loop records it for its queues; it orders what is submitted after.",
    )

    @model_validator(mode="after")
    def _aging_needs_priorities(self) -> PrioritySettings:
        if not self.enabled and self.aging_seconds is not None:
            raise ValueError("aging_seconds is set but enabled is false (oldest first, which is aging_seconds: 0)")
        return self

    @property
    def order_aging_seconds(self) -> float | None:
        """The aging that orders the loop's queues: 0 (oldest first) with priorities off, else aging_seconds."""
        return 0.0 if not self.enabled else self.aging_seconds

    @field_validator("levels", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML reads `high: 5` as an int; a one-value range is still a range.
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
        return value

    @field_validator("levels")
    @classmethod
    def _cover_once(cls, levels: dict[str, str]) -> dict[str, str]:
        if not levels:
            raise ValueError("at least one level is needed")
        spans = sorted((parse_level(text), name) for name, text in levels.items())
        expected = PRIORITY_MIN
        for (low, high), name in spans:
            if low < expected:
                raise ValueError(f"level {name!r} ({low}-{high}) overlaps another level")
            if low > expected:
                raise ValueError(f"{_span(expected, low - 1)} belong to any level")
            expected = high + 1
        if expected <= PRIORITY_MAX:
            raise ValueError(f"{_span(expected, PRIORITY_MAX)} belong to any level")
        return levels

    def ranges(self) -> dict[str, tuple[int, int]]:
        return level_ranges(self.levels)


TenantName = Annotated[str, Field(min_length=1, max_length=MAX_TENANT_LENGTH)]


class TenantSettings(_Section):
    weights: dict[TenantName, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Each tenant's share of a claim relative to the others (1 for a tenant not named here).",
    )


class WorkerSettings(_Section):
    batch_size: int = Field(10, ge=1, description="Contexts per batch (fixed sizing, and the dynamic start).")
    max_parallel_batches: int = Field(3, ge=1, description="Batches in flight at once per loop.")
    dynamic_batch_sizing: bool = Field(True, description="Size batches from load and history.")
    min_batch_size: int = Field(5, ge=1, description="Smallest batch the dynamic sizer may choose.")
    max_batch_size: int = Field(20, ge=1, description="Largest batch the dynamic sizer may choose.")
    batch_timeout_seconds: float = Field(60, ge=0, description="Longest wait for a batch to fill.")
    lease_seconds: float = Field(LEASE_SECONDS, gt=0, description="How long a claim holds its contexts unless renewed.")
    engine_concurrency: int | Literal["auto"] = Field(
        "auto",
        description="Async engine calls in flight at once per worker, over all its partitions; 'auto' learns it.",
    )
    min_engine_concurrency: int = Field(4, ge=1, description="Lowest limit of engine_concurrency: auto.")
    max_engine_concurrency: int = Field(256, ge=1, description="Highest limit of engine_concurrency: auto.")
    rate_limit_per_second: float | None = Field(
        None, gt=0, description="Deprecated: read as limits.requests_per_minute = 60 x this (shared by every loop)."
    )
    context_timeout_seconds: float | None = Field(
        None, gt=0, description="Longest engine call (a batch engine's: per partition); past it the row fails."
    )
    target_batch_seconds: float = Field(10, gt=0, description="Batch duration the dynamic sizer aims for.")
    memory_high_fraction: float = Field(0.8, gt=0, le=1, description="Worker memory use that makes batches shrink.")
    sizer: str | None = Field(
        None, description="'fixed', 'dynamic' or 'module:callable'; None follows dynamic_batch_sizing."
    )
    sizing_history: bool = Field(
        True,
        description="Start the dynamic sizer from what earlier runs of this engine, queues and setup learned, "
        "and keep what this one learns (the `sizing_history` collection); false does neither.",
    )
    priorities: PrioritySettings = Field(default_factory=PrioritySettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    queues: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: [DEFAULT_QUEUE], min_length=1, description="The queues this loop claims from."
    )

    @property
    def sizes_given(self) -> bool:
        """Whether the config sets a batch size; with none, an async engine's batches follow its window."""
        return bool(self.model_fields_set.intersection(BATCH_SIZE_KEYS))

    @field_validator("engine_concurrency")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value

    @model_validator(mode="after")
    def _bounds_ordered(self) -> WorkerSettings:
        if self.min_engine_concurrency > self.max_engine_concurrency:
            raise ValueError(
                f"min_engine_concurrency ({self.min_engine_concurrency}) is larger than "
                f"max_engine_concurrency ({self.max_engine_concurrency})"
            )
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size ({self.min_batch_size}) is larger than max_batch_size ({self.max_batch_size})"
            )
        return self


class MongoSettings(_Section):
    uri: str | None = Field(None, description="MongoDB URI; None starts the embedded server.")
    database: str = Field("ctxbatch", min_length=1, description="Database holding `contexts` and `batches`.")
    outage_seconds: float = Field(
        OUTAGE_SECONDS,
        gt=0,
        description="How long a loop, and a partition with results to write, waits out a database that is away.",
    )


class AdaptiveSettings(_Section):
    minimum: int = Field(1, ge=0)
    maximum: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveSettings:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is larger than maximum ({self.maximum})")
        return self


class DaskSettings(_Section):
    scheduler_address: str | None = Field(None, description="Join this cluster instead of starting one.")
    n_workers: int | None = Field(None, ge=1, description="Workers of the local cluster (None: one per core).")
    threads_per_worker: int = Field(1, ge=1, description="Threads per local worker.")
    processes: bool = Field(True, description="Local workers are processes (True) or threads.")
    dashboard_address: str | None = Field(":0", description="Dashboard bind address; None for no dashboard.")
    adaptive: AdaptiveSettings | None = Field(None, description="Scale local workers between these bounds.")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, description="Bearer token every route but /healthz requires.")
    max_contexts_per_request: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)
    openai_queue: str = Field(
        DEFAULT_QUEUE, min_length=1, max_length=64, description="The queue of batches made through /v1/batches."
    )
    max_file_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest file /v1/files takes (OpenAI's own limit is 200 MB)."
    )
    idempotency_hours: float = Field(
        IDEMPOTENCY_HOURS,
        gt=0,
        description="How long a submission's idempotency key replays its first answer (HTTP, CLI and Python).",
    )


AlertMetric = Literal[
    "success_rate",
    "queue_length",
    "oldest_pending_seconds",
    "latency_p95_seconds",
    "throughput_per_second",
    "critical_errors",
    "seconds_since_progress",
]
LEVELLED_METRICS = ("queue_length", "oldest_pending_seconds")


class AlertRule(_Section):
    """One alert: fires once `metric` has been above (or below) its threshold for `for_seconds`."""

    name: str = Field(min_length=1, max_length=200, description="The alert's name (Alertmanager's alertname).")
    metric: AlertMetric = Field(description="What the rule watches, read from the database's stats.")
    above: float | None = Field(None, description="Holds while the metric is greater than this.")
    below: float | None = Field(None, description="Holds while the metric is less than this.")
    for_seconds: float = Field(0, ge=0, description="How long the rule must hold before it fires.")
    level: str | None = Field(None, description="A priority level, for queue_length and oldest_pending_seconds.")
    severity: str = Field("warning", min_length=1, description="The `severity` label of the alert.")
    summary: str | None = Field(None, description="One line for people; a default one names the rule.")

    @model_validator(mode="after")
    def _one_threshold(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"alert {self.name!r} needs exactly one of `above` and `below`")
        if self.level is not None and self.metric not in LEVELLED_METRICS:
            raise ValueError(f"alert {self.name!r}: `level` applies to {' and '.join(LEVELLED_METRICS)} only")
        return self


DEFAULT_ALERTS = (
    AlertRule(
        name="CtxbatchNoProgress",
        metric="seconds_since_progress",
        above=600,
        severity="critical",
        summary="No context has finished for 10 minutes while work waits",
    ),
    AlertRule(
        name="CtxbatchSuccessRateLow",
        metric="success_rate",
        below=0.9,
        for_seconds=60,
        summary="Fewer than 90% of the contexts finished in the window completed",
    ),
    AlertRule(
        name="CtxbatchCriticalErrors",
        metric="critical_errors",
        above=0,
        severity="critical",
        summary="A critical error stopped a batch",
    ),
)


class MonitoringSettings(_Section):
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve `run`'s Prometheus metrics here.")
    metrics_host: str = Field("127.0.0.1", min_length=1, description="Address the metrics server binds.")
    evaluate_every_seconds: float = Field(15, gt=0, description="How often each loop evaluates the alert rules.")
    window_seconds: float = Field(
        STATS_WINDOW_SECONDS, gt=0, description="The span of the database's stats the rules see."
    )
    webhook_url: str | None = Field(None, description="POST alerts here, in Alertmanager's webhook format.")
    default_alerts: bool = Field(
        True, description="Evaluate DEFAULT_ALERTS too (a rule of `alerts` of the same name wins)."
    )
    alerts: list[AlertRule] = Field(default_factory=list, description="Alert rules, evaluated over the whole cluster.")
    alert_error_rate: float | None = Field(
        None, ge=0, le=1, description="Shorthand for a rule `CtxbatchErrorRate`: success_rate below 1 - this."
    )
    alert_queue_length: int | None = Field(
        None, ge=0, description="Shorthand for a rule `CtxbatchQueueLong`: queue_length above this."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("alerts")
    @classmethod
    def _unique_names(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [rule.name for rule in rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"alert names must be unique; {repeated[0]!r} repeats")
        return rules

    def rules(self) -> list[AlertRule]:
        """The rules every loop evaluates: the defaults (unless off), the shorthands, then `alerts`."""
        chosen = {rule.name: rule for rule in (DEFAULT_ALERTS if self.default_alerts else ())}
        if self.alert_error_rate is not None:
            rule = AlertRule(name="CtxbatchErrorRate", metric="success_rate", below=1 - self.alert_error_rate)
            chosen[rule.name] = rule
        if self.alert_queue_length is not None:
            rule = AlertRule(name="CtxbatchQueueLong", metric="queue_length", above=self.alert_queue_length)
            chosen[rule.name] = rule
        chosen.update((rule.name, rule) for rule in self.alerts)
        return list(chosen.values())


class HttpSettings(_Section):
    """The built-in HTTP engine (`--engine http`): one request per context."""

    url: str | None = Field(None, description="Where each context's payload is sent.")
    method: str = Field("POST", min_length=1, description="The HTTP method.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Request headers; ${ENV_VAR} is replaced from the worker's environment."
    )
    timeout_seconds: float = Field(60, gt=0, description="Longest wait for one response.")
    payload_field: str | None = Field(None, description="Send this payload field instead of the whole payload.")


class OpenAISettings(_Section):
    """The built-in OpenAI engine (`--engine openai`): each payload is a line of an OpenAI batch,
    `{"method": "POST", "url": "/v1/...", "body": {...}}`, sent to the API at `base_url`."""

    base_url: str | None = Field(
        None,
        description="The API's root, where `/v1` ends; unset: $OPENAI_BASE_URL, else https://api.openai.com/v1.",
    )
    api_key: str | None = Field(
        None,
        repr=False,  # never printed
        description="Sent as `Authorization: Bearer`; ${ENV_VAR} is replaced from the worker's environment; "
        "unset: $OPENAI_API_KEY (no header without either).",
    )
    # The openai SDK's own default: a long completion (a reasoning model, a large max_tokens) may take
    # minutes, and a call given up on is paid for and then sent again.
    timeout_seconds: float = Field(600, gt=0, description="Longest wait for one response.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value


class LimitsSettings(_Section):
    """Budgets shared by every worker of every loop on the database that names the same limit (io/limits.py)."""

    requests_per_minute: float | None = Field(
        None, gt=0, description="Engine calls per minute over every loop sharing `name`; calls wait, none refused."
    )
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Tokens per minute over every loop sharing `name`: estimated, corrected from usage."
    )
    name: str = Field(
        "default", min_length=1, description="The limit's name: loops on one database sharing it share one budget."
    )
    tenant_in_flight: int | None = Field(
        None, ge=1, description="Most contexts of one tenant processing at once, over every loop on the database."
    )


class Settings(_Section):
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    engine: str | None = Field(None, description="The engine as 'module:callable'.")
    dask: DaskSettings = Field(default_factory=DaskSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    @model_validator(mode="after")
    def _one_request_rate(self) -> Settings:
        if self.worker.rate_limit_per_second is not None and self.limits.requests_per_minute is not None:
            raise ValueError(
                "worker.rate_limit_per_second and limits.requests_per_minute are both set; keep "
                "limits.requests_per_minute (rate_limit_per_second is deprecated)"
            )
        return self

    @property
    def shared_limits(self) -> LimitsSettings:
        """`limits:` as the run applies it: the deprecated `worker.rate_limit_per_second` R read as 60 x R a minute."""
        rate = self.worker.rate_limit_per_second
        if rate is None:
            return self.limits
        return self.limits.model_copy(update={"requests_per_minute": 60 * rate})

    @model_validator(mode="after")
    def _alert_levels_exist(self) -> Settings:
        for index, rule in enumerate(self.monitoring.alerts):
            if rule.level is not None and rule.level not in self.worker.priorities.levels:
                known = ", ".join(self.worker.priorities.levels)
                raise ValueError(f"monitoring.alerts.{index}.level: no level {rule.level!r} (levels: {known})")
        return self


def _first_problem(error: ValidationError) -> ConfigError:
    problem = error.errors()[0]
    key = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown key"
    return ConfigError(key, message)


def load_config(source: str | os.PathLike[str] | dict[str, Any] | Settings | None = None) -> Settings:
    """Settings from a YAML file, a dict, or nothing (all defaults); ConfigError names the bad key."""
    if isinstance(source, Settings):
        return source
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("", "the configuration must be a mapping of sections")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _first_problem(exc) from None
